"""How a standby replica (metadata.standby; docs/cold-start.md) is parked and woken: the signals
and hooks, and the supervisor's part that parks a warmed replica and promotes it (`StandbyPhase`).

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
from openeas.controller.startup import StartPhases
from openeas.controller.supervisor_base import ALIVE_CHECK_S, _Failure, _Stop
from openeas.kernel.states import ReplicaPhase
from openeas.runtime import ProcessRef, Runtime
from openeas.spec import ServiceSpec

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


class StandbyPhase(StartPhases):
    """The supervisor's standby part: park a warmed replica out of routing, wake it on promotion."""

    def thaw(self) -> str | None:
        """Resume it if it may be frozen (before a stop: SIGTERM waits for the thaw); None when
        done, else what went wrong."""
        err = None
        if self.frozen and self.ref is not None:
            err = thaw(self.runtime, self.ref)
        self.frozen = False
        return err

    def promote(self) -> None:
        """The reconciler cleared this standby's `standby` flag: go into routing now. A parked
        process group is resumed here and now (one signal, within the reconciler's pass: a request
        queued on the frozen replica runs at once, not after this task's next turn and a thread
        hop); the life loop then wakes and probes it. Before it is parked (its freeze may still be
        under way in a thread) the life loop thaws it itself."""
        if self.parked:
            self.promoted_at = self.clock.now()
        if self.parked and self.frozen and self.ref is not None and self.runtime.name in FREEZES_GROUPS:
            self.runtime.signal(self.ref, signal.SIGCONT)
            self.frozen = False
        self.nudge.set()

    async def _standby(self, spec: ServiceSpec, *, adopted: bool) -> float:
        """Standby: parked warmed out of routing (frozen or hot) until the reconciler promotes it,
        then thawed, woken and probed; the seconds from the promotion to the passing probe."""
        sb = spec.metadata.standby
        row = self._row()
        assert self.ref is not None and row.port is not None
        host, port = row.host, row.port
        if not adopted:
            if sb.sleep_path and (err := await post_hook(host, port, sb.sleep_path)):
                self._event(row, "SleepFailed", f"metadata.standby.sleep_path: {err}", warning=True)
            row = self._set(phase=ReplicaPhase.STANDBY, message=f"standby ({sb.mode})")
            self._cold_start_done(row)
        frozen = sb.mode == "frozen" and can_freeze(self.runtime)
        why = f"the {self.runtime.name} runtime cannot freeze a replica"
        if frozen:  # again after an adoption: freezing a frozen replica is harmless
            self.frozen = True
            if err := await asyncio.to_thread(freeze, self.runtime, self.ref):
                frozen, why = False, err
                await asyncio.to_thread(self.thaw)
        elif self.frozen:
            await asyncio.to_thread(self.thaw)
        self.frozen = frozen
        paused = "containers paused" if self.runtime.name == "container" else "process group stopped"
        how = f"frozen ({paused})" if frozen else "hot"
        if sb.mode == "frozen" and not frozen:
            how += f": {why}"
        self._event(
            row,
            "Standby",
            f"standby {'adopted' if adopted else 'parked'}, {how}",
            warning=not frozen and sb.mode == "frozen",
        )
        await self._parked()
        began = self.promoted_at if self.promoted_at is not None else self.clock.now()
        if self.frozen and (err := await asyncio.to_thread(self.thaw)):
            raise _Failure("ThawFailed", f"metadata.standby.mode frozen: {err}")
        if sb.wake_path and (err := await post_hook(host, port, sb.wake_path)):
            raise _Failure("WakeFailed", f"metadata.standby.wake_path: {err}")
        await self._wait_ready(spec, promoted=True)
        return self.clock.now() - began

    async def _parked(self) -> None:
        """Wait, out of routing, until the reconciler promotes the standby (or a stop, or a crash)."""
        assert self.ref is not None
        self.parked, self.promoted_at = True, None  # `promote` may resume it from here on
        try:
            while self._row().standby:
                if not await self._alive():
                    code = self.runtime.exit_code(self.ref)
                    raise _Failure("Crashed", f"standby process {self.ref.pid} exited (code {code})")
                if await self.clock.sleep(ALIVE_CHECK_S, until=self.nudge):
                    self.nudge.clear()
                if self.stop_requested.is_set():
                    raise _Stop()
        finally:
            self.parked = False
