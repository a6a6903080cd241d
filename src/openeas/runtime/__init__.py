"""Everything that touches replica processes: the ``Runtime`` protocol (start, watch, signal,
adopt, orphan scan), the process runtime, ``stop`` (SIGTERM → grace → SIGKILL on an
``openeas.kernel.clock.Clock``) and ``launch``, which turns a spec into what a runtime starts
(ports and mounts rewritten).

``RUNTIMES`` holds the runtimes a spec may select by name (``ServiceSpec.runtime``). The fake
runtime for tests (``openeas.runtime.fake``) is deliberately not among them.
"""

from __future__ import annotations

from collections.abc import Callable

from openeas.runtime.base import LaunchSpec, ProcessRef, ReplicaProcess, Runtime, orphans
from openeas.runtime.launch import build_launch, free_port, pick_port, rewrite_mounts, rewrite_port
from openeas.runtime.process import ProcessRuntime
from openeas.runtime.stop import StopResult, stop

# Runtimes by the name a spec selects (``ServiceSpec.runtime``); each entry builds a fresh one.
RUNTIMES: dict[str, Callable[[], Runtime]] = {
    ProcessRuntime.name: ProcessRuntime,
}


def get_runtime(name: str) -> Runtime:
    """A new runtime registered as ``name``; ValueError naming the known ones otherwise."""
    try:
        factory = RUNTIMES[name]
    except KeyError:
        known = ", ".join(sorted(RUNTIMES)) or "none"
        raise ValueError(f"unknown runtime {name!r} (known: {known})") from None
    return factory()


__all__ = [
    "RUNTIMES",
    "LaunchSpec",
    "ProcessRef",
    "ProcessRuntime",
    "ReplicaProcess",
    "Runtime",
    "StopResult",
    "build_launch",
    "free_port",
    "get_runtime",
    "orphans",
    "pick_port",
    "rewrite_mounts",
    "rewrite_port",
    "stop",
]
