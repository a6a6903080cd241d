"""Time as the runtime and the controllers see it: the ``Clock`` protocol and the real clock.

Everything that waits (a supervisor's probe period and restart backoff, the reconciler's tick,
SIGTERM → grace → SIGKILL in :func:`openeas.runtime.stop`) waits through a Clock, so a test can
pass :class:`openeas.runtime.fake.FakeClock` and run minutes of replica life in milliseconds.
Decisions take the ``now`` a clock gives them; delays compare timestamps, never count ticks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale with any origin: only differences mean anything."""
        ...

    async def sleep(self, seconds: float, until: asyncio.Event | None = None) -> bool:
        """Wait ``seconds``, or less if ``until`` is set first (a stop request).

        Returns True when ``until`` is (or already was) set, False when the time passed.
        """
        ...


class LoopClock:
    """The real clock: ``time.monotonic`` (the timer asyncio's own loop uses) and loop sleeps."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, until: asyncio.Event | None = None) -> bool:
        if until is None:
            await asyncio.sleep(max(0.0, seconds))
            return False
        if until.is_set():
            return True
        try:
            await asyncio.wait_for(until.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True


LOOP_CLOCK = LoopClock()
