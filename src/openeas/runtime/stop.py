"""Stopping a replica: SIGTERM, a grace period, then SIGKILL.

Draining traffic away from the replica before this is the supervisor's job; this helper only
ends the processes, through any :class:`~openeas.runtime.base.Runtime`. It waits until the
replica's whole process group is gone (``Runtime.group_alive``), so a server still shutting
down under an exited shell is not cut short. All waiting goes through a
:class:`~openeas.kernel.clock.Clock`, so tests run it on a fake one.
"""

from __future__ import annotations

import signal
from typing import Literal

from openeas.kernel.clock import LOOP_CLOCK, Clock
from openeas.runtime.base import ProcessRef, Runtime

StopResult = Literal["terminated", "killed"]

# After SIGKILL the kernel ends the processes at once; this only bounds the wait for a reap.
KILL_WAIT_S = 5.0


async def _wait_gone(
    runtime: Runtime, ref: ProcessRef, timeout_s: float, poll_s: float, clock: Clock
) -> bool:
    deadline = clock.now() + timeout_s
    while runtime.group_alive(ref):
        left = deadline - clock.now()
        if left <= 0:
            return False
        await clock.sleep(min(poll_s, left))
    return True


async def stop(
    runtime: Runtime, ref: ProcessRef, grace_s: float, poll_s: float = 0.05, *, clock: Clock = LOOP_CLOCK
) -> StopResult:
    """SIGTERM the replica's group, wait up to ``grace_s`` seconds, then SIGKILL it.

    Returns ``"terminated"`` when everything exited within the grace period (or was already
    gone), ``"killed"`` when SIGKILL was needed. ``poll_s``: how often the group is checked.
    """
    if not runtime.group_alive(ref):
        return "terminated"
    runtime.signal(ref, signal.SIGTERM)
    if await _wait_gone(runtime, ref, grace_s, poll_s, clock):
        return "terminated"
    runtime.signal(ref, signal.SIGKILL)
    await _wait_gone(runtime, ref, KILL_WAIT_S, poll_s, clock)
    return "killed"
