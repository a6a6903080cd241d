"""One pull per image per node: the guard every image runtime puts around its engine's pull.

Two replicas of one image that start together both find the image missing; without the guard
both would pull it. :class:`PullOnce` keeps one lock per image: the first caller checks and
pulls, the second waits for it and then finds the image (no second pull). The container runtime
and the tests' fake image runtime use this same class, so the supervisor-level test exercises
the guard the real runtime relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from openeas.runtime.base import PullResult


class PullOnce:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    async def pull(
        self,
        image: str,
        has_image: Callable[[str], bool],
        do_pull: Callable[[], Awaitable[None]],
    ) -> PullResult:
        """``do_pull()`` unless ``has_image(image)`` (checked in a thread, under the image's lock)."""
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(image, asyncio.Lock())
        async with lock:
            t0 = loop.time()
            if await asyncio.to_thread(has_image, image):
                return PullResult(False, loop.time() - t0)
            await do_pull()
            return PullResult(True, loop.time() - t0)
