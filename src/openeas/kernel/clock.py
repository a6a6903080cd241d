"""The one clock: the ``Clock`` protocol, the real clock and the one fake.

Everything that waits (a supervisor's probe period and restart backoff, the reconciler's tick,
SIGTERM → grace → SIGKILL, the autoscaler's and the rollout's loops, the dispatcher, the batch
runner, the stress generator) waits through a Clock, so a test can pass :class:`FakeClock` and run
minutes of life in milliseconds. Decisions take the ``now`` a clock gives them; delays compare
timestamps, never count ticks. ``now`` is monotonic (only differences mean anything); ``wall`` is
epoch seconds, for what is stored or shown (a step's start, a cron rule, a lease's expiry).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale with any origin: only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (``time.time``): for stored and shown times, never for delays."""
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

    def wall(self) -> float:
        return time.time()

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


async def sleep_until(clock: Clock, deadline: float, until: asyncio.Event | None = None) -> bool:
    """Wait until ``clock.now()`` reaches ``deadline`` (or ``until`` is set: True)."""
    return await clock.sleep(deadline - clock.now(), until)


# ---- the fake ------------------------------------------------------------------------------------


@dataclass(order=True)
class _Sleeper:
    deadline: float
    seq: int
    fut: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """Virtual seconds. ``sleep`` waits until :meth:`advance` or :meth:`run_until` moves time to
    its deadline (or its ``until`` event is set); ``now`` never moves by itself.

    ``call_at`` schedules a callback at a virtual time (a simulated peer's answer), run in time
    order with the sleepers as time moves. With ``drive=True`` the clock drives itself: a
    ``sleep`` moves time to its own deadline at once, running the callbacks and waking the sleepers
    due before it, for a test whose one coroutine is the only one that sleeps (the stress
    generator against a simulated service: a whole run in milliseconds, no stepping from outside).
    """

    # The loop counts as settled after this many passes in a row in which no task touched the
    # clock and no task started or ended: a woken task reaches its next wait within a pass or two.
    SETTLED_PASSES = 5

    # What ``wall`` adds to ``now``: virtual epoch seconds in late 2023, so stored times look real.
    WALL_OFFSET = 1_700_000_000.0

    def __init__(
        self, start: float = 1000.0, busy: Callable[[], bool] | None = None, *, drive: bool = False
    ) -> None:
        self._t = start
        self.drive = drive  # a sleep moves time itself (see the class's docstring)
        # True while work outside the loop is under way (a thread's database call): time stands
        # still until it is done, as it would on a real clock that the work takes no time of.
        self.busy = busy
        self._sleepers: list[_Sleeper] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # (when, seq, callback)
        self._seq = itertools.count()
        self._activity = 0  # counts calls: how `settle` tells a busy loop from an idle one

    def now(self) -> float:
        self._activity += 1
        return self._t

    def wall(self) -> float:
        return self.now() + self.WALL_OFFSET

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` when time reaches ``when`` (virtual seconds), in time order."""
        self._activity += 1
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    async def sleep(self, seconds: float, until: asyncio.Event | None = None) -> bool:
        self._activity += 1
        if until is not None and until.is_set():
            return True
        if self.drive:
            self._advance(self._t + max(0.0, seconds))
            await asyncio.sleep(0)
            return until is not None and until.is_set()
        loop = asyncio.get_running_loop()
        me = _Sleeper(self._t + max(0.0, seconds), next(self._seq), loop.create_future())
        heapq.heappush(self._sleepers, me)
        waiter = None if until is None else loop.create_task(until.wait())
        try:
            if waiter is None:
                await me.fut
            else:
                either: set[asyncio.Future[Any]] = {me.fut, waiter}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            me.fut.cancel()  # a woken or abandoned sleeper is dropped when the heap reaches it
            if waiter is not None:
                waiter.cancel()
        return until is not None and until.is_set()  # a stop request that came in time wins

    async def settle(self, max_passes: int = 100_000) -> None:
        """Yield to the loop until every task waits (on this clock, an event, or is done)."""
        quiet, tasks = 0, -1
        for _ in range(max_passes):
            mark = self._activity
            await asyncio.sleep(0)
            if mark != self._activity:
                quiet = 0
                continue
            quiet += 1
            if quiet == 1:  # counting tasks costs more than a pass: only at both ends of a quiet run
                tasks = len(asyncio.all_tasks())
            elif quiet >= self.SETTLED_PASSES:
                if len(asyncio.all_tasks()) == tasks:
                    return
                quiet = 0
        raise RuntimeError("the event loop never settled: a task keeps running without waiting")

    def _next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0].fut.done():
            heapq.heappop(self._sleepers)
        sleeper = self._sleepers[0].deadline if self._sleepers else None
        timer = self._timers[0][0] if self._timers else None
        if sleeper is None or timer is None:
            return timer if sleeper is None else sleeper
        return min(sleeper, timer)

    def _waiting_deadline(self) -> float | None:
        """The next deadline, or None while ``busy`` says work outside the loop is under way."""
        return None if self.busy is not None and self.busy() else self._next_deadline()

    def _advance(self, deadline: float) -> None:
        target = max(self._t, deadline)
        timers = self._timers
        while timers and timers[0][0] <= target:  # each at its own time; it may schedule more
            when, _, fn = heapq.heappop(timers)
            self._t = max(self._t, when)
            fn()
        self._t = target
        while self._sleepers and self._sleepers[0].deadline <= self._t:
            s = heapq.heappop(self._sleepers)
            if not s.fut.done():
                s.fut.set_result(None)

    async def run_until(
        self,
        done: Callable[[], bool],
        *,
        limit_s: float = 3600.0,
        each: Callable[[], object] | None = None,
        stuck_after_s: float = 2.0,
    ) -> None:
        """Step time, earliest deadline first, until ``done()``; ``each()`` runs after every step.

        TimeoutError after ``limit_s`` virtual seconds; AssertionError when nothing waits on the
        clock for ``stuck_after_s`` real seconds while ``done()`` stays false (a stuck task).
        """
        end = self._t + limit_s
        idle_since: float | None = None
        while True:
            await self.settle()
            if each is not None:
                each()
            if done():
                return
            deadline = self._waiting_deadline()
            if deadline is None:  # something waits on the real world (a thread): give it a moment
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > stuck_after_s:
                    raise AssertionError("nothing waits on the clock and the condition is not met")
                await asyncio.sleep(0.001)
                continue
            idle_since = None
            if deadline > end:
                raise TimeoutError(f"condition not met within {limit_s:g} s of virtual time")
            self._advance(deadline)

    def jump(self, seconds: float) -> None:
        """Move time ``seconds`` on at once, outside the loop (a test of decisions that sleep
        nowhere); sleepers due are woken, in one go, at the loop's next pass."""
        self._advance(self._t + max(0.0, seconds))

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, waking every sleeper due meanwhile in time order."""
        end = self._t + max(0.0, seconds)
        while True:
            await self.settle()
            if self.busy is not None and self.busy():
                await asyncio.sleep(0.001)
                continue
            deadline = self._next_deadline()
            if deadline is None or deadline > end:
                break
            self._advance(deadline)
        self._advance(end)
        await self.settle()


def set_from_any_thread(event: asyncio.Event, loop: asyncio.AbstractEventLoop | None) -> None:
    """Set ``event``, which belongs to ``loop`` (None: not running yet), from any thread. The API
    wakes the reconciler and the autoscaler from worker threads of its own: there a plain
    ``Event.set`` would not wake the loop until its next timer fires."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and running is not loop:
        loop.call_soon_threadsafe(event.set)
    else:
        event.set()
