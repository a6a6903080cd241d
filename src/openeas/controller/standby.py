"""How a standby replica (metadata.standby; docs/cold-start.md) is parked and woken.

Frozen: the replica's process group is stopped with SIGSTOP once it is warmed (no CPU, its memory
kept) and resumed with SIGCONT on promotion, on a stop (a stopped process would hold its SIGTERM
until the SIGKILL) and on adoption as hot. Only runtimes that signal a whole process group can
freeze (`FREEZES_GROUPS`); elsewhere (a container: the signal reaches the engine's client, not
the container) a frozen standby is kept hot and the supervisor says so in an event. Servers that
can release an accelerator while idle get a POST to `sleep_path` before the freeze and to
`wake_path` after the thaw (vLLM's /sleep and /wake_up with --enable-sleep-mode).
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from openeas.controller.probe import base_url
from openeas.runtime import ProcessRef, Runtime

# Runtimes whose `signal` reaches the replica's whole process group.
FREEZES_GROUPS = frozenset({"process", "fake"})
# A sleep or wake POST may take this long (vLLM moves weights off and back onto the GPU), seconds.
HOOK_TIMEOUT_S = 60.0


def can_freeze(runtime: Runtime) -> bool:
    return getattr(runtime, "name", None) in FREEZES_GROUPS


def freeze(runtime: Runtime, ref: ProcessRef) -> None:
    """Stop the replica's process group (SIGSTOP): no CPU until `thaw`."""
    runtime.signal(ref, signal.SIGSTOP)


def thaw(runtime: Runtime, ref: ProcessRef) -> None:
    """Resume the replica's process group (SIGCONT); harmless on a running one."""
    if can_freeze(runtime):
        runtime.signal(ref, signal.SIGCONT)


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
