"""Stopping a replica: SIGTERM, a grace period, then SIGKILL.

Draining traffic away from the replica before this is the reconciler's job; this helper only
ends the processes. It works with any :class:`~openeas.runtime.base.Runtime`; a runtime that
can tell whether a replica's whole process group is gone (``group_alive``) is waited on until
the group is gone, so a server still shutting down under an exited shell is not cut short.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Literal, Protocol, runtime_checkable

from openeas.runtime.base import ProcessRef, Runtime

StopResult = Literal["terminated", "killed"]

# After SIGKILL the kernel ends the processes at once; this only bounds the wait for a reap.
KILL_WAIT_S = 5.0


@runtime_checkable
class GroupAware(Protocol):
    def group_alive(self, ref: ProcessRef) -> bool: ...


def _running(runtime: Runtime, ref: ProcessRef) -> bool:
    if isinstance(runtime, GroupAware):
        return runtime.group_alive(ref)
    return runtime.alive(ref)


async def _wait_gone(runtime: Runtime, ref: ProcessRef, timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _running(runtime, ref):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(poll_s, left))
    return True


async def stop(runtime: Runtime, ref: ProcessRef, grace_s: float, poll_s: float = 0.05) -> StopResult:
    """SIGTERM the replica's group, wait up to ``grace_s`` seconds, then SIGKILL it.

    Returns ``"terminated"`` when everything exited within the grace period (or was already
    gone), ``"killed"`` when SIGKILL was needed.
    """
    if not _running(runtime, ref):
        return "terminated"
    runtime.signal(ref, signal.SIGTERM)
    if await _wait_gone(runtime, ref, grace_s, poll_s):
        return "terminated"
    runtime.signal(ref, signal.SIGKILL)
    await _wait_gone(runtime, ref, KILL_WAIT_S, poll_s)
    return "killed"
