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
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Unpack

from openeas.controller.capacity import AdmissionGate
from openeas.controller.checks import checks_of
from openeas.controller.probe import Probe, ProbeTracker, Transition, probe_once, probe_port, run_exec_probe
from openeas.controller.rollout import restart_backoff_s
from openeas.controller.standby import can_freeze, freeze, post_hook
from openeas.controller.standby import thaw as thaw_group
from openeas.controller.warmup import WarmupSender, load_warmup, run_warmup
from openeas.errors import MountError
from openeas.kernel.checks import ProbeResult
from openeas.kernel.clock import Clock, LoopClock
from openeas.kernel.states import ReplicaPhase
from openeas.runtime import ProcessRef, Runtime
from openeas.runtime import stop as stop_process
from openeas.runtime.base import ImageRuntime, LaunchSpec, PullError, Unschedulable
from openeas.runtime.container_args import build_container_launch
from openeas.runtime.identity import ReplicaUser, ReplicaUsers, hand_over, node_tag
from openeas.runtime.launch import build_launch, pick_port, rewrite_mounts
from openeas.runtime.limits import MEMORY_LIMIT_HOW
from openeas.runtime.select import Runtimes
from openeas.spec import ServiceSpec
from openeas.spec.models import HealthCheck, docker_credentials
from openeas.storage import NodeCache, prepare_mounts
from openeas.storage.cache_index import limit_from_env
from openeas.storage.hostpaths import HostPaths
from openeas.storage.oss import resolve_url
from openeas.storage.pyreqs import PrepareError, ensure_requirements
from openeas.store import ReplicaRow, Store
from openeas.store.schema import ReplicaFields
from openeas.telemetry.coldstart import breakdown, start_record

log = logging.getLogger("openeas.replica")

# The server's own secrets, paths and addresses never reach a replica's environment.
PRIVATE_ENV = frozenset(
    {"OPENEAS_ADMIN_TOKEN", "OPENEAS_SERVER", "OPENEAS_GATEWAY_URL", "OPENEAS_DATA_DIR", "OPENEAS_QUEUE_URL"}
)
# A replica that stayed Ready this long has its crash backoff reset.
STABLE_AFTER_S = 60.0
# How often a starting or Ready replica's process is checked for life (a cheap runtime call), seconds.
ALIVE_CHECK_S = 0.1
# Probe period while a replica starts (the spec's period applies once it is Ready), seconds.
STARTUP_PROBE_PERIOD_S = 0.1
# One warmup request may take this long (a first LLM request can be slow), seconds.
WARMUP_REQUEST_TIMEOUT_S = 120.0
# How often an image pull's progress is written to the replica's message, seconds.
PULL_PROGRESS_EVERY_S = 1.0
# How often a draining replica's in-flight requests are asked of the gateway, seconds.
DRAIN_POLL_S = 0.1


class GatewayView(NamedTuple):
    """One replica as the gateway sees it now."""

    routed: bool  # new requests may still be sent to it (the gateway has not applied Draining yet)
    in_flight: int  # requests sent to it and not yet answered (streams included)


# Asks the gateway about one replica id; None when the gateway cannot be reached.
GatewayViewFn = Callable[[str], Awaitable[GatewayView | None]]


@dataclass
class SupervisorConfig:
    data_dir: Path
    oss_root: Path | None
    # The host folders a spec may name (the server's --allow-host-path, its local bucket): checked
    # again at each start, so a version stored before the rule cannot read the host. None: unchecked.
    host_paths: HostPaths | None = None
    # Time between leaving the routing table and SIGTERM when the gateway cannot be asked
    # (`gateway_view` is None or fails), seconds.
    drain_s: float = 1.0
    # What the gateway knows about a replica (routed? requests in flight?): a drain waits on it.
    gateway_view: GatewayViewFn | None = None
    base_env: Mapping[str, str] | None = None
    # Called with (service, cold-start breakdown) when a replica becomes Ready (metrics).
    on_ready: Callable[[str, Mapping[str, float | None]], None] | None = None
    # How supervisors and the reconciler wait, probe and warm up: real by default, fakes in tests.
    clock: Clock = field(default_factory=LoopClock)
    probe: Probe = probe_once
    warmup: WarmupSender = run_warmup
    # Who process replicas run as (openeas.runtime.identity); None: the server's own user.
    replica_users: ReplicaUsers | None = None
    # The node cache's bound, bytes (None: unbounded): `openeas server --cache-limit`, else 20 GiB.
    cache_limit_bytes: int | None = field(default_factory=limit_from_env)


class _Stop(Exception):
    """Raised inside the supervisor when the replica was asked to stop."""


class _Failure(Exception):
    """A start attempt failed in a way that a restart (with backoff) may fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Unschedulable(Exception):
    """No node can hold the replica now: it stays Pending and asks again later (no backoff streak)."""


UNSCHEDULABLE_RETRY_S = 5.0  # seconds between two placement attempts of a replica no node can hold


class ReplicaSupervisor:
    def __init__(
        self,
        rid: str,
        store: Store,
        runtime: Runtime | Runtimes,
        cache: NodeCache,
        cfg: SupervisorConfig,
    ) -> None:
        self.rid = rid
        self.store = store
        self.runtimes = runtime if isinstance(runtime, Runtimes) else Runtimes(runtime)
        # The runtime of this replica's current process: set at adoption or start.
        self.runtime: Runtime = self.runtimes.process
        self.cache = cache
        self.cfg = cfg
        self.clock = cfg.clock  # durations and waits only; the store stamps phases in wall time
        self.stop_requested = asyncio.Event()
        self.nudge = asyncio.Event()  # a parked standby looks at its row now (promote, stop)
        self.frozen = False  # its process group may be stopped (SIGSTOP): thaw before any stop
        self.gate = AdmissionGate()  # the node's capacity: the reconciler opens it (controller/capacity.py)
        self.ref: ProcessRef | None = None
        self.streak = 0  # consecutive failed starts/crashes: drives the backoff, reset when stable
        self.grace_s = 30.0  # eas.termination_grace_period of this replica's version, seconds
        self._env: dict[str, str] = {}  # the process's environment (exec probes run with it)
        self.user: ReplicaUser | None = None  # who the process runs as (None: the server's user)
        self._unschedulable_said = False  # the Unschedulable event is written once, not every retry

    # ---- helpers --------------------------------------------------------------------------------
    def _row(self) -> ReplicaRow:
        row = self.store.get_replica(self.rid)
        if row is None:
            raise _Stop()
        return row

    def _set(self, **fields: Unpack[ReplicaFields]) -> ReplicaRow:
        row = self.store.update_replica(self.rid, **fields)
        if row is None:
            raise _Stop()
        return row

    def _event(self, row: ReplicaRow, reason: str, message: str, warning: bool = False) -> None:
        self.store.record_event(
            row.service, reason, message, type="Warning" if warning else "Normal", replica=self.rid
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up (raising _Stop) as soon as a stop is requested."""
        if await self.clock.sleep(seconds, until=self.stop_requested):
            raise _Stop()

    def thaw(self) -> str | None:
        """Resume it if it may be frozen (before a stop: SIGTERM waits for the thaw); None when
        done, else what went wrong."""
        err = None
        if self.frozen and self.ref is not None:
            err = thaw_group(self.runtime, self.ref)
        self.frozen = False
        return err

    def _drop_process(self) -> None:
        if self.ref is not None:
            self.runtime.forget(self.ref)
            self.ref = None

    # ---- lifecycle ------------------------------------------------------------------------------
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
        self.ref = self._adopt(row)
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

    def promote(self) -> None:
        """The reconciler cleared this standby's `standby` flag: go into routing now."""
        self.nudge.set()

    def _fail(self, reason: str, message: str) -> None:
        """Enter Failed with `message` (and a Warning event `reason`); the restart follows."""
        row = self._set(phase=ReplicaPhase.FAILED, message=message)
        self._event(row, reason, message, warning=True)

    def _adopt(self, row: ReplicaRow) -> ProcessRef | None:
        if row.pid is None or row.start_ticks is None:
            if row.phase != ReplicaPhase.PENDING:
                # No process was recorded (a control plane died mid-start or mid-backoff): the
                # replica starts afresh.
                self._set(phase=ReplicaPhase.PENDING, phase_times={}, cold_start={})
            return None
        ref = ProcessRef(pid=row.pid, start_ticks=row.start_ticks, extra={"replica": self.rid})
        try:
            self.runtime = self.runtimes.get(row.runtime)
        except LookupError as exc:
            self._event(row, "Lost", f"cannot adopt replica process {row.pid}: {exc}", warning=True)
            self._set(
                pid=None, start_ticks=None, phase=ReplicaPhase.PENDING, phase_times={}, message=str(exc)
            )
            return None
        if self.runtime.adopt(ref):
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

    async def _start(self, row: ReplicaRow, spec: ServiceSpec) -> None:
        choice = self.runtimes.choose(spec)
        if choice.name is None:
            raise _Failure("NoRuntime", choice.reason)
        self.runtime = self.runtimes.get(choice.name)
        if row.runtime != choice.name:
            row = self._set(runtime=choice.name)
        if isinstance(self.runtime, ImageRuntime):
            await self._pull(self.runtime, spec)
        self._set(phase=ReplicaPhase.FETCHING, message=None)
        workdir = Path(row.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        users = self.cfg.replica_users
        self.user = users.for_service(row.service) if users and choice.name == "process" else None
        cache = self.cache if self.user is None else self.cache.for_owner(self.user)
        try:
            resolved = _resolve_storage(spec, self.cfg.oss_root)
            if resolved.storage:  # copies from object storage can take minutes: off the loop
                plan = await asyncio.to_thread(
                    prepare_mounts, resolved, cache, workdir=workdir, host_paths=self.cfg.host_paths
                )
            else:  # nothing to fetch: no thread hop
                plan = prepare_mounts(resolved, cache, workdir=workdir, host_paths=self.cfg.host_paths)
            if self.user is not None:  # its own folder (and empty_dir mounts), no one else's
                hand_over(workdir, self.user)
        except MountError as exc:
            raise _Failure("MountFailed", exc.message) from None
        except OSError as exc:
            raise _Failure("MountFailed", f"cannot prepare the replica's folder: {exc}") from None
        cold = {**(self._row().cold_start or {}), "fetch": plan.summary()}
        pythonpath = await self._prepare(row, spec, choice.name, plan.paths, cold)
        self._set(phase=ReplicaPhase.STARTING, cold_start=cold)
        base = self.cfg.base_env if self.cfg.base_env is not None else os.environ
        try:
            # No await from here to the port being stored: two replicas never pick the same port.
            port = pick_port({r.port for r in self.store.replicas() if r.port is not None})
            if choice.name == "container":
                launch = self._container_launch(row, spec, port, plan.paths)
            else:
                launch = build_launch(
                    spec,
                    replica_id=self.rid,
                    port=port,
                    mounts=plan.paths,
                    workdir=str(workdir),
                    log_path=row.log_path,
                    base_env={k: v for k, v in base.items() if k not in PRIVATE_ENV},
                    sidecar_ports=self._sidecar_ports(spec, port),
                )
                env = {**launch.env, **self._identity(row)}  # last: the spec cannot hide the replica
                if self.user is not None:
                    env["HOME"] = str(workdir)  # the server's HOME is not the replica's to read
                if pythonpath:  # prepare.pythonRequirements, installed once per node, come first
                    paths = (pythonpath, env.get("PYTHONPATH"))
                    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
                who = None if self.user is None else (self.user.uid, self.user.gid)
                launch = replace(launch, env=env, user=who)
                self._env = env
            if self.runtime.name == "ray":  # placement takes seconds: off the loop, the port kept by the row
                self._set(port=port)
                self.ref = await asyncio.to_thread(self.runtime.start, launch)
            else:
                self.ref = self.runtime.start(launch)
        except Unschedulable as exc:  # fits on no node: stays Pending, says which resource is short
            self._set(phase=ReplicaPhase.PENDING, message=str(exc))
            raise _Unschedulable(str(exc)) from None
        except (MountError, OSError, ValueError) as exc:
            kind = "container" if choice.name == "container" else "process"
            raise _Failure("StartFailed", f"cannot start the replica {kind}: {exc}") from None
        node = self.ref.extra.get("node")  # the Ray node id; None on the embedded runtimes
        self._set(pid=self.ref.pid, start_ticks=self.ref.start_ticks, port=port, node=node)
        if launch.container is not None:
            what = f"container {launch.container.name} (process {self.ref.pid}) published on port {port}"
        else:
            what = f"process {self.ref.pid} listening on port {port}"
            if self.ref.extra.get("node"):
                what += f" on Ray node {self.ref.extra['node'][:12]}"
            if launch.memory_limit_mb is not None:
                what += f"; memory limited to {launch.memory_limit_mb} MB by {MEMORY_LIMIT_HOW}"
        self._event(row, "Started", what)

    def _sidecar_ports(self, spec: ServiceSpec, port: int) -> dict[int, int]:
        """A free host port for each port the other containers name (process runtime)."""
        used = {r.port for r in self.store.replicas() if r.port is not None} | {port}
        out: dict[int, int] = {}
        for side in spec.containers[1:]:
            if "port" in side.model_fields_set and side.port != spec.main.port and side.port not in out:
                out[side.port] = pick_port(used)
                used.add(out[side.port])
        return out

    async def _prepare(
        self,
        row: ReplicaRow,
        spec: ServiceSpec,
        runtime: str,
        mounts: Mapping[str, str],
        cold: dict[str, Any],
    ) -> str | None:
        """Preparing: ``prepare.pythonRequirements`` into the node cache (once per node); the
        folder for PYTHONPATH, or None. ``cold`` gets the phase's summary."""
        prep = spec.main.prepare
        if prep is None or not (prep.pythonRequirements or prep.pythonRequirementsPath):
            return None
        if runtime == "container":
            msg = "prepare.pythonRequirements is not applied in containers yet: install them in the image"
            self._event(row, "PrepareSkipped", msg, warning=True)
            return None
        self._set(phase=ReplicaPhase.PREPARING, cold_start=cold)
        try:
            lines = list(prep.pythonRequirements or [])
            if prep.pythonRequirementsPath:
                local = rewrite_mounts(prep.pythonRequirementsPath, mounts, shell=False)
                text = await asyncio.to_thread(Path(local).read_text)
                lines += text.splitlines()
            done = await asyncio.to_thread(ensure_requirements, self.cfg.data_dir / "cache", lines)
        except PrepareError as exc:
            raise _Failure("PrepareFailed", str(exc)) from None
        except OSError as exc:
            raise _Failure("PrepareFailed", f"prepare.pythonRequirementsPath: {exc}") from None
        cold["prepare"] = {
            "requirements": done.requirements,
            "cache_hit": done.hit,
            "seconds": round(done.seconds, 3),
        }
        return done.path

    def _container_launch(
        self, row: ReplicaRow, spec: ServiceSpec, port: int, mounts: Mapping[str, str]
    ) -> LaunchSpec:
        container = build_container_launch(
            spec,
            replica_id=self.rid,
            data_dir=str(self.cfg.data_dir),
            host_port=port,
            mounts=mounts,
            workdir=row.workdir,
        )
        return LaunchSpec(
            replica_id=self.rid,
            argv=container.argv,
            env=container.env,
            cwd=row.workdir,
            log_path=row.log_path,
            port=port,
            container=container,
        )

    async def _pull(self, runtime: ImageRuntime, spec: ServiceSpec) -> None:
        """Pulling: every image of the spec onto this node, unless it is here already (no phase
        at all when all are). ``cold_start.pull`` describes the main container's image."""
        main = spec.main.image
        assert main is not None  # the container runtime is only chosen with an image
        images = list(dict.fromkeys(c.image for c in spec.containers if c.image))
        missing = [i for i in images if not await asyncio.to_thread(runtime.has_image, i)]
        if not missing:
            self._set(cold_start={"pull": {"image": main, "cached": True}})
            return
        auth = docker_credentials(spec.dockerAuth) if spec.dockerAuth else None
        pulled: dict[str, float] = {}
        waited: set[str] = set()  # images another replica pulled while this one waited
        for image in missing:
            self._set(phase=ReplicaPhase.PULLING, message=f"pulling {image}")
            last = [0.0]

            def progress(line: str, image: str = image, last: list[float] = last) -> None:
                now = self.clock.now()
                if now - last[0] >= PULL_PROGRESS_EVERY_S:  # a row write per line would flood the store
                    last[0] = now
                    self.store.update_replica(self.rid, message=f"pulling {image}: {line[:200]}")

            try:
                result = await runtime.pull(image, docker_auth=auth, progress=progress)
            except PullError as exc:
                raise _Failure("PullFailed", f"cannot pull image {image}: {exc}") from None
            pulled[image] = round(result.seconds, 3)
            if not result.pulled:
                waited.add(image)
        summary: dict[str, Any] = {"image": main, "cached": main not in pulled}
        if main in pulled:
            summary["seconds"] = pulled[main]
        if main in waited:
            summary["waited_for"] = "another replica's pull"
        if len(images) > 1:
            summary["images"] = {i: {"cached": i not in pulled} for i in images}
        self._set(cold_start={"pull": summary})

    def _identity(self, row: ReplicaRow) -> dict[str, str]:
        return {
            "OPENEAS_REPLICA_ID": self.rid,
            "OPENEAS_SERVICE": row.service,
            "OPENEAS_NODE": node_tag(self.cfg.data_dir),  # the orphan scan's mark, not the path
        }

    async def _wait_ready(self, spec: ServiceSpec) -> None:
        """Probe (the startup role of :func:`checks_of`) until the replica answers; _Failure if its
        process exits or it does not get ready within the startup timeout."""
        checks = checks_of(spec.main)
        check = checks.startup
        tracker = ProbeTracker.for_check(check, started_at=self.clock.now())
        tracker.startup_timeout_s = checks.startup_timeout_s
        # While starting, probe often: every fraction of a second shaved here is cold start.
        tracker.period_s = min(tracker.period_s, STARTUP_PROBE_PERIOD_S)
        row = self._row()
        while True:
            assert self.ref is not None
            if not self.runtime.alive(self.ref):
                code = self.runtime.exit_code(self.ref)
                raise _Failure(
                    "StartFailed", f"process exited during startup (code {code}); see `openeas logs`"
                )
            now = self.clock.now()
            if row.port is not None and tracker.due(now):
                result = await self._probe(spec, row, check)
                if tracker.record(result.ok, now) is Transition.BECAME_READY:
                    return
                if tracker.startup_expired(self.clock.now()):
                    msg = (
                        f"not ready within the startup deadline of {tracker.startup_timeout_s:g} s "
                        f"({checks.startup_timeout_from}; raise it if the model needs longer): "
                        + result.detail
                    )
                    raise _Failure("StartupTimeout", msg)
            await self._sleep(ALIVE_CHECK_S)

    async def _warm(self, spec: ServiceSpec) -> None:
        row = self._set(phase=ReplicaPhase.WARMING)
        if not spec.warm_up_data_path or row.port is None:
            return
        try:
            local = _resolve_local(spec.warm_up_data_path, self.cfg.oss_root)
            if self.cfg.host_paths is not None:
                self.cfg.host_paths.local(local, "warm_up_data_path")
            requests = await asyncio.to_thread(load_warmup, local)  # off the loop: a slow disk
        except MountError as exc:
            raise _Failure("WarmupFailed", exc.message) from None
        except (OSError, ValueError) as exc:
            raise _Failure("WarmupFailed", f"warm_up_data_path: {exc}") from None
        report = await self.cfg.warmup(row.host, row.port, requests, timeout_s=WARMUP_REQUEST_TIMEOUT_S)
        summary = f"warmup sent {report.sent} requests, {report.failed} failed"
        if report.sent and report.failed == report.sent:
            # Not one warmup request worked: this replica is broken, not merely cold.
            first = report.errors[0] if report.errors else ""
            raise _Failure("WarmupFailed", f"{summary}: {first}")
        self._event(row, "Warmed", summary, warning=not report.ok)

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

    def _cold_start_done(self, row: ReplicaRow) -> Mapping[str, float | None]:
        spans = breakdown(row.phase_times)
        cold = {**(row.cold_start or {}), **spans}
        self._set(cold_start=cold)
        self.store.record_cold_start(row.service, row.version, row.id, start_record(cold))
        if self.cfg.on_ready is not None:
            self.cfg.on_ready(row.service, spans)
        return spans

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
        while self._row().standby:
            if not self.runtime.alive(self.ref):
                code = self.runtime.exit_code(self.ref)
                raise _Failure("Crashed", f"standby process {self.ref.pid} exited (code {code})")
            if await self.clock.sleep(ALIVE_CHECK_S, until=self.nudge):
                self.nudge.clear()
            if self.stop_requested.is_set():
                raise _Stop()
        began = self.clock.now()
        if err := await asyncio.to_thread(self.thaw):
            raise _Failure("ThawFailed", f"metadata.standby.mode frozen: {err}")
        if sb.wake_path and (err := await post_hook(host, port, sb.wake_path)):
            raise _Failure("WakeFailed", f"metadata.standby.wake_path: {err}")
        await self._wait_ready(spec)
        return self.clock.now() - began

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
            if not self.runtime.alive(self.ref):
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

    async def _probe(self, spec: ServiceSpec, row: ReplicaRow, check: HealthCheck | None) -> ProbeResult:
        """One probe of ``check``: an ``exec`` command inside the replica, else over the network."""
        assert row.port is not None
        if check is None or check.exec_ is None:
            return await self.cfg.probe(row.host, _probe_port(spec, check, row.port), check)
        argv = check.exec_.argv()
        exec_argv = getattr(self.runtime, "exec_argv", None)
        if exec_argv is not None and self.ref is not None:  # in the container
            cmd, cwd, env = exec_argv(self.ref, argv), None, None
            user = None
        else:  # a process: in its folder, with its environment, as its user
            cmd, cwd, env = argv, row.workdir, self._env or None
            users = self.cfg.replica_users
            user = users.for_service(row.service) if users is not None else None
        timeout_s = float(check.timeout_seconds)
        return await run_exec_probe(cmd, cwd=cwd, env=env, timeout_s=timeout_s, user=user)

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
        if self.ref is not None and self.runtime.group_alive(self.ref):
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


def _probe_port(spec: ServiceSpec, check: HealthCheck | None, replica_port: int) -> int:
    """The check's port follows the replica's rewritten port unless it names another one."""
    return probe_port(check, container_port=spec.main.port, replica_port=replica_port)


def _resolve_storage(spec: ServiceSpec, oss_root: Path | None) -> ServiceSpec:
    if not any(m.oss for m in spec.storage):
        return spec
    storage = []
    for i, m in enumerate(spec.storage):
        if m.oss is not None:
            url = resolve_url(m.oss.path, oss_root, where=f"storage[{i}].oss.path")
            m = m.model_copy(update={"oss": m.oss.model_copy(update={"path": url})})
        storage.append(m)
    return spec.model_copy(update={"storage": storage})


def _resolve_local(path: str, oss_root: Path | None) -> str:
    url = resolve_url(path, oss_root, where="warm_up_data_path")
    return url[len("file://") :] if url.startswith("file://") else url
