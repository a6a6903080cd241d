"""How a standby replica (metadata.standby; docs/cold-start.md) is parked and woken.

Frozen: once it is warmed the replica stops using CPU, its memory kept, until its promotion, a stop
(a frozen process would hold its SIGTERM until the SIGKILL) or its adoption as hot. A runtime that
signals a whole process group (`FREEZES_GROUPS`) stops the group with SIGSTOP and resumes it with
SIGCONT; the container runtime pauses the replica's containers (`podman pause` / `docker pause`:
the cgroup freezer) and unpauses them. Elsewhere a frozen standby is kept hot and the supervisor
says so in an event. Servers that can release an accelerator while idle get a POST to
`sleep_path` before the freeze and to `wake_path` after the thaw (vLLM's /sleep and /wake_up with
--enable-sleep-mode).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol, cast

import aiohttp

from openeas.controller.probe import base_url
from openeas.runtime import ProcessRef, Runtime

# Runtimes whose `signal` reaches the replica's whole process group.
FREEZES_GROUPS = frozenset({"process", "fake"})
# A sleep or wake POST may take this long (vLLM moves weights off and back onto the GPU), seconds.
HOOK_TIMEOUT_S = 60.0


class Pauses(Protocol):
    """A runtime that freezes a replica itself (the container runtime: the engine's pause)."""

    def pause(self, ref: ProcessRef) -> str | None: ...

    def unpause(self, ref: ProcessRef) -> str | None: ...


def _pauses(runtime: Runtime) -> Pauses | None:
    return cast(Pauses, runtime) if callable(getattr(runtime, "pause", None)) else None


def can_freeze(runtime: Runtime) -> bool:
    return getattr(runtime, "name", None) in FREEZES_GROUPS or _pauses(runtime) is not None


def freeze(runtime: Runtime, ref: ProcessRef) -> str | None:
    """Stop the replica (SIGSTOP to its group, or its containers paused): no CPU until `thaw`.
    None when done (or it already was), else what went wrong."""
    if (pauses := _pauses(runtime)) is not None:
        return pauses.pause(ref)
    runtime.signal(ref, signal.SIGSTOP)
    return None


def thaw(runtime: Runtime, ref: ProcessRef) -> str | None:
    """Resume the replica (SIGCONT, or its containers unpaused); harmless on a running one."""
    if (pauses := _pauses(runtime)) is not None:
        return pauses.unpause(ref)
    if can_freeze(runtime):
        runtime.signal(ref, signal.SIGCONT)
    return None


async def post_hook(host: str, port: int, path: str, *, timeout_s: float = HOOK_TIMEOUT_S) -> str | None:
    """POST ``path`` on the replica; None when it answered 2xx, else what went wrong."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession() as session,
            session.post(base_url(host, port) + path) as resp,
        ):
            return None if resp.status < 300 else f"POST {path} answered {resp.status}"
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return f"POST {path} failed: {type(exc).__name__}: {exc}"
