"""The one fake clock's callbacks (`FakeClock.call_at`), stepped from outside (`run_until`) or
driving itself (``drive=True``, the stress generator's mode): the same order either way."""

from __future__ import annotations

import asyncio

import pytest

from openeas.kernel.clock import FakeClock


@pytest.mark.parametrize("drive", [False, True], ids=["stepped", "driven"])
def test_callbacks_and_sleepers_run_in_time_order(drive: bool) -> None:
    clock = FakeClock(0.0, drive=drive)
    seen: list[tuple[str, float]] = []

    def at(name: str) -> None:
        seen.append((name, clock.now()))

    def then_more() -> None:
        at("t2")
        clock.call_at(2.5, lambda: at("t2.5"))  # a callback may schedule another

    async def sleeper() -> None:
        await clock.sleep(2.0)
        at("woke")
        await clock.sleep(1.0)
        at("woke")

    async def main() -> None:
        clock.call_at(1.0, lambda: at("t1"))
        clock.call_at(2.0, then_more)
        clock.call_at(9.0, lambda: at("late"))
        task = asyncio.ensure_future(sleeper())
        if drive:
            await task  # nobody steps the clock: the sleeps move it
        else:
            await clock.run_until(task.done)

    asyncio.run(main())
    # A callback due at a sleeper's deadline runs first; nothing due after the last sleep runs.
    assert seen == [("t1", 1.0), ("t2", 2.0), ("woke", 2.0), ("t2.5", 2.5), ("woke", 3.0)]
    assert clock.now() == 3.0


def test_a_driven_sleep_that_is_stopped_first_does_not_move_time() -> None:
    clock = FakeClock(5.0, drive=True)
    stop = asyncio.Event()
    stop.set()
    assert asyncio.run(clock.sleep(10.0, until=stop)) is True
    assert clock.now() == 5.0
