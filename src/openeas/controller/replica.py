"""One replica's life: fetch mounts → start → probe → warm up → Ready → watch → drain → stop.

Who writes a replica row: the reconciler creates it (Pending) and sets `stopping`; from then on
its `ReplicaSupervisor` task alone writes its phase, pid, start ticks, port, restart_count,
message and cold-start timings, and deletes it once Stopped, so phases never race. The one
exception is server exit: the reconciler cancels the supervisors first, then (when it stops the
replicas with the server) resets their rows to Pending itself.

A stop request (`stop_requested`, set by the reconciler with `stopping`) interrupts any wait;
a Ready replica then drains: Draining takes it out of the routing table at once (the routing
push), and the supervisor asks the gateway (`SupervisorConfig.gateway_view`) until the gateway no
longer routes to it and has no request in flight on it, for at most
`eas.termination_grace_period` (a fixed `drain_s` when the gateway cannot be asked); only then
SIGTERM → `eas.termination_grace_period` → SIGKILL. A process an earlier control plane recorded
is adopted through `Runtime.adopt`: alive and Ready, it keeps serving without a new start; alive
but not Ready, it is probed (and warmed) again; gone, the replica restarts (`restart_count` + 1).
Every failure (crash, exit or timeout during start, unhealthy, failed warmup) enters Failed and
waits out the backoff (`restart_backoff_s` of the failure streak) there, then restarts from
Pending. Processes are reached only through the `Runtime`; all waiting goes through
`SupervisorConfig.clock`, and probes and warmup through `SupervisorConfig.probe`/`.warmup`, so
tests run all of it on fakes. Phases and their legal changes: `openeas.kernel.states`.
"""

from __future__ import annotations

import asyncio
import logging

from openeas.controller.checks import checks_of
from openeas.controller.probe import ProbeTracker, Transition
from openeas.controller.rollout import restart_backoff_s
from openeas.controller.standby import StandbyPhase
from openeas.controller.startup import PRIVATE_ENV
from openeas.controller.supervisor_base import (
    ALIVE_CHECK_S,
    GatewayView,
    GatewayViewFn,
    SupervisorConfig,
    _Failure,
    _Stop,
    _Unschedulable,
)
from openeas.kernel.states import ReplicaPhase
from openeas.runtime import ProcessRef
from openeas.runtime import stop as stop_process
from openeas.spec import ServiceSpec
from openeas.spec.models import HealthCheck
from openeas.store import ReplicaRow

__all__ = [
    "DRAIN_POLL_S",
    "PRIVATE_ENV",
    "STABLE_AFTER_S",
    "GatewayView",
    "GatewayViewFn",
    "ReplicaSupervisor",
    "SupervisorConfig",
]

log = logging.getLogger("openeas.replica")

# A replica that stayed Ready this long has its crash backoff reset.
STABLE_AFTER_S = 60.0
# How often a draining replica's in-flight requests are asked of the gateway, seconds.
DRAIN_POLL_S = 0.1
UNSCHEDULABLE_RETRY_S = 5.0  # seconds between two placement attempts of a replica no node can hold


class ReplicaSupervisor(StandbyPhase):
    """One replica's life (see the module's docstring); its parts: controller/supervisor_base.py,
    controller/startup.py, controller/standby.py."""

    async def run(self) -> None:
        try:
            await self._lifecycle()
        except _Stop:
            pass
        except Exception as exc:  # a bug must not leave a process running unsupervised
            log.exception("replica %s supervisor failed", self.rid)
            row = self.store.get_replica(self.rid)
            if row is not None:
                self._event(row, "SupervisorError", f"{type(exc).__name__}: {exc}", warning=True)
        await self._shutdown()

    async def _lifecycle(self) -> None:
        row = self._row()
        spec = self.store.version_spec(row.service, row.version)
        self.grace_s = spec.metadata.eas.termination_grace_period
        self.ref = await self._adopt(row)
        # Adopted while Ready: it keeps serving, no new start. Adopted while Standby: it is
        # parked again (frozen or hot as the spec says), no new start either.
        serving = self.ref is not None and row.phase == ReplicaPhase.READY
        parked = self.ref is not None and row.phase == ReplicaPhase.STANDBY
        while True:
            if self._row().stopping:
                raise _Stop()
            try:
                if not serving:
                    if not parked:
                        if self.ref is None:
                            if not await self.gate.wait(self.clock, self.stop_requested, self._pending):
                                raise _Stop()
                            await self._start(self._row(), spec)
                        await self._wait_ready(spec)
                        await self._warm(spec)
                    promotion_s = None
                    if parked or self._row().standby:
                        promotion_s = await self._standby(spec, adopted=parked)
                    parked = False
                    self._mark_ready(promotion_s)
                    serving = True
                if serving:
                    await self._watch(spec)
            except _Failure as exc:
                self._fail(exc.reason, str(exc))
            except _Unschedulable as exc:
                if not self._unschedulable_said:
                    self._event(self._row(), "Unschedulable", str(exc), warning=True)
                    self._unschedulable_said = True
                await self._sleep(UNSCHEDULABLE_RETRY_S)
                continue
            except (_Stop, asyncio.CancelledError):
                raise
            except Exception as exc:  # a bug: back off like a crash instead of churning replicas
                log.exception("replica %s: unexpected error", self.rid)
                self._fail("SupervisorError", f"internal error: {type(exc).__name__}: {exc}")
            serving = parked = False
            await self._restart_after_failure()

    def _pending(self, reason: str) -> None:
        """Waiting for the node's capacity: the reason is the replica's message (describe, API)."""
        self._set(message=reason)

    def request_stop(self) -> None:
        self.stop_requested.set()
        self.nudge.set()
        self.gate.wake()

    async def _adopt(self, row: ReplicaRow) -> ProcessRef | None:
        if row.pid is None or row.start_ticks is None:
            if row.phase != ReplicaPhase.PENDING:
                # No process was recorded (a control plane died mid-start or mid-backoff): the
                # replica starts afresh.
                self._set(phase=ReplicaPhase.PENDING, phase_times={}, cold_start={})
            return None
        # The node it ran on, as a start records it: a Ray runtime that finds the actor gone
        # steers the restart away from that node (runtime/ray_runtime.py, SUSPECT_NODE_S).
        where = {"node": row.node} if row.node else {}
        ref = ProcessRef(pid=row.pid, start_ticks=row.start_ticks, extra={"replica": self.rid, **where})
        try:
            self.runtime = self.runtimes.get(row.runtime)
        except LookupError as exc:
            self._event(row, "Lost", f"cannot adopt replica process {row.pid}: {exc}", warning=True)
            self._set(
                pid=None, start_ticks=None, phase=ReplicaPhase.PENDING, phase_times={}, message=str(exc)
            )
            return None
        if await self._runtime_call(self.runtime.adopt, ref):
            self.frozen = row.phase == ReplicaPhase.STANDBY  # perhaps: a SIGCONT is harmless
            self._event(row, "Adopted", f"replica process {row.pid} adopted after a control-plane restart")
            if row.phase not in (ReplicaPhase.READY, ReplicaPhase.STANDBY):
                # Its cold start is unknown: timings restart here rather than span the downtime.
                self._set(phase=ReplicaPhase.STARTING, phase_times={}, message="adopted; probing")
            return ref
        self._set(
            pid=None,
            start_ticks=None,
            restart_count=row.restart_count + 1,
            phase=ReplicaPhase.PENDING,
            phase_times={},
            message="process was gone after a control-plane restart",
        )
        self._event(
            row, "Lost", f"replica process {row.pid} was gone after a control-plane restart", warning=True
        )
        return None

    def _mark_ready(self, promotion_s: float | None = None) -> None:
        """Ready (into routing): after a cold start, or a standby's promotion (``promotion_s``:
        seconds from the promotion to its passing probe)."""
        if promotion_s is not None:  # with its phase: whoever sees it Ready sees the figure
            cold = {**(self._row().cold_start or {}), "promotion_s": round(promotion_s, 3)}
            row = self._set(phase=ReplicaPhase.READY, message=None, cold_start=cold)
            self._event(row, "Promoted", f"standby promoted into routing in {promotion_s:.3f}s")
            return
        row = self._set(phase=ReplicaPhase.READY, message=None)
        spans = self._cold_start_done(row)
        self._event(row, "Ready", f"replica ready after {spans.get('total_s') or 0:.2f}s")

    async def _watch(self, spec: ServiceSpec) -> None:
        """Return when the process dies; raise when liveness fails past its threshold. A failing
        readiness check moves the replica to Unready (out of routing) and back, no restart."""
        checks = checks_of(spec.main)
        now = self.clock.now()
        ready_since = now
        probes: list[tuple[str, HealthCheck | None, ProbeTracker]] = []
        roles = [("liveness", checks.liveness)] if checks.live_probe else []
        if checks.readiness is not None:
            roles.append(("readiness", checks.readiness))
        for role, check in roles:
            tracker = ProbeTracker.for_check(check, started_at=now)
            tracker.record(True, now)  # it just became Ready: the next probe is one period away
            probes.append((role, check, tracker))
        while True:
            assert self.ref is not None
            if not await self._alive():
                code = self.runtime.exit_code(self.ref)
                self._fail("Crashed", f"process {self.ref.pid} exited (code {code})")
                if self.clock.now() - ready_since > STABLE_AFTER_S:
                    self.streak = 0
                return
            for role, check, tracker in probes:
                now = self.clock.now()
                if not tracker.due(now):
                    continue
                row = self._row()
                if row.port is None:
                    continue
                result = await self._probe(spec, row, check)
                change = tracker.record(result.ok, now)
                if role == "liveness" and change is Transition.BECAME_UNREADY:
                    field = "liveness_check" if spec.main.liveness_check is not None else "health_check"
                    raise _Failure(
                        "Unhealthy",
                        f"{field} failed {tracker.consecutive_failures} times: {result.detail}",
                    )
                if role == "readiness" and change is not None:
                    self._readiness_changed(change, tracker, result.detail)
            await self._sleep(ALIVE_CHECK_S)

    def _readiness_changed(self, change: Transition, tracker: ProbeTracker, detail: str) -> None:
        if change is Transition.BECAME_UNREADY:
            n = tracker.consecutive_failures
            msg = f"readiness_check failed {n} times: {detail}; out of routing until it passes"
            row = self._set(phase=ReplicaPhase.UNREADY, message=msg)
            self._event(row, "NotReady", msg, warning=True)
        else:
            row = self._set(phase=ReplicaPhase.READY, message=None)
            self._event(row, "ReadyAgain", f"readiness_check passes again: {detail}; back in routing")

    async def _restart_after_failure(self) -> None:
        """The replica is Failed: stop what is left of it, wait out the backoff, back to Pending."""
        row = self._row()
        count = row.restart_count + 1
        if self.ref is not None:
            self.thaw()  # a frozen standby's SIGTERM waits for its SIGCONT
            # Also after its leader exited: what it spawned in its group must not outlive it.
            await stop_process(self.runtime, self.ref, self.grace_s, clock=self.clock)
            self._drop_process()
        self.streak += 1
        delay = restart_backoff_s(self.streak)
        why = f": {row.message}" if row.message else ""
        self._set(
            restart_count=count,
            pid=None,
            start_ticks=None,
            message=f"restarting in {delay:.0f}s (restart {count}){why}",
        )
        self._event(row, "Restarting", f"restart {count} in {delay:.0f}s{why}", warning=True)
        await self._sleep(delay)
        # A new cold start begins: its timings start from this Pending.
        self._set(phase=ReplicaPhase.PENDING, phase_times={}, cold_start={})

    async def _shutdown(self) -> None:
        """Drain (leave the routing table, let in-flight requests finish), stop, forget the row."""
        row = self.store.get_replica(self.rid)
        if row is None:
            return
        if self.ref is not None and await self._runtime_call(self.runtime.group_alive, self.ref):
            self.thaw()  # a frozen standby's SIGTERM waits for its SIGCONT
            if row.phase in (ReplicaPhase.READY, ReplicaPhase.UNREADY):
                self._set(phase=ReplicaPhase.DRAINING)
                await self._drain(row)  # a stop is under way: nothing interrupts it
            how = await stop_process(self.runtime, self.ref, self.grace_s, clock=self.clock)
            self._event(row, "Stopped", f"process {self.ref.pid} {how}")
        self._drop_process()
        self.store.update_replica(self.rid, phase=ReplicaPhase.STOPPED)
        self.store.delete_replica(self.rid)

    async def _drain(self, row: ReplicaRow) -> None:
        """Draining (out of the routing table): wait until the gateway has stopped routing to this
        replica and has no request in flight on it, at most the termination grace period. When the
        gateway cannot be asked, a fixed `drain_s` instead."""
        ask = self.cfg.gateway_view
        if ask is None:
            await self.clock.sleep(self.cfg.drain_s)
            return
        deadline = self.clock.now() + self.grace_s
        while True:
            try:
                view = await ask(self.rid)
            except Exception:  # a broken probe of the gateway must not leave the replica running
                log.exception("replica %s: asking the gateway about in-flight requests failed", self.rid)
                view = None
            if view is None:
                await self.clock.sleep(self.cfg.drain_s)
                return
            if not view.routed and view.in_flight == 0:
                return
            left = deadline - self.clock.now()
            if left <= 0:
                self._event(
                    row,
                    "DrainTimeout",
                    f"{view.in_flight} requests still in flight after the termination grace period "
                    f"({self.grace_s:.0f}s); stopping anyway",
                    warning=True,
                )
                return
            await self.clock.sleep(min(DRAIN_POLL_S, left))
