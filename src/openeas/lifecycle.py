"""Components of the server, each with ``start`` and ``stop``, and the runner that composes them.

`server.py` builds the list (gateway keeper, reconciler, rollouts, gateway counters, autoscaler,
batch runner, API) and hands it to `run_components`: they start in list order and stop in the
reverse order, also when one of them fails to start (those started are stopped). The server
runs until its `stop` event is set (a signal) or one component's task ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger("openeas.server")


class Component(Protocol):
    name: str

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Start; the task that runs until ``stop`` (None: nothing runs in the background)."""
        ...

    async def stop(self) -> None:
        """Stop (``stop`` is set already): end the task, release what it holds."""
        ...


class Loop:
    """A loop ``run(stop)`` as a component; ``on_stop`` runs after it ended (e.g. a shutdown)."""

    def __init__(
        self,
        name: str,
        run: Callable[[asyncio.Event], Awaitable[None]],
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._on_stop = on_stop
        self._task: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        async def run() -> None:
            await self._run(stop)

        self._task = asyncio.create_task(run(), name=self.name)
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._on_stop is not None:
            await self._on_stop()


async def run_components(components: Sequence[Component], stop: asyncio.Event) -> None:
    """Start each in order; run until ``stop`` or until a task ends; stop all in reverse order."""
    started: list[Component] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for c in components:
            task = await c.start(stop)
            started.append(c)
            if task is not None:
                tasks.append(task)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for t in done - {stopped}:
            log.error("%s ended by itself; stopping the server", t.get_name())
        stopped.cancel()
    finally:
        stop.set()
        for c in reversed(started):
            try:
                await c.stop()
            except Exception:
                log.exception("stopping %s failed", c.name)
