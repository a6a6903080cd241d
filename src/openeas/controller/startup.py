"""A replica's cold start under its supervisor: pull the images, fetch the mounts, prepare
Python requirements, start the process or container, probe until it answers (the startup role of
its checks) and send its warmup requests. One probe helper serves the startup and the Ready
replica's watch (controller/replica.py)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from openeas.controller.checks import checks_of
from openeas.controller.probe import ProbeTracker, Transition, probe_port, run_exec_probe
from openeas.controller.supervisor_base import ALIVE_CHECK_S, SupervisorBase, _Failure, _Unschedulable
from openeas.controller.warmup import load_warmup
from openeas.errors import MountError
from openeas.kernel.checks import ProbeResult
from openeas.kernel.states import ReplicaPhase
from openeas.runtime.base import (
    LOOPBACK,
    ImageRuntime,
    LaunchSpec,
    PlacingRuntime,
    ProcessRef,
    PullError,
    Unschedulable,
    port_clash,
)
from openeas.runtime.container_args import build_container_launch
from openeas.runtime.identity import hand_over, node_tag
from openeas.runtime.launch import build_launch, demand_of, pick_ports, rewrite_mounts
from openeas.runtime.limits import MEMORY_LIMIT_HOW
from openeas.spec import ServiceSpec
from openeas.spec.models import HealthCheck, docker_credentials
from openeas.storage import prepare_mounts
from openeas.storage.oss import resolve_url
from openeas.storage.pyreqs import PrepareError, ensure_requirements
from openeas.store import ReplicaRow
from openeas.telemetry.coldstart import breakdown, start_record
from openeas.userfile import UserFileError

# The server's own secrets, paths and addresses never reach a replica's environment.
PRIVATE_ENV = frozenset(
    {"OPENEAS_ADMIN_TOKEN", "OPENEAS_SERVER", "OPENEAS_GATEWAY_URL", "OPENEAS_DATA_DIR", "OPENEAS_QUEUE_URL"}
)
# Probe period while a replica starts (the spec's period applies once it is Ready), seconds.
STARTUP_PROBE_PERIOD_S = 0.1
# One warmup request may take this long (a first LLM request can be slow), seconds.
WARMUP_REQUEST_TIMEOUT_S = 120.0
# How often an image pull's progress is written to the replica's message, seconds.
PULL_PROGRESS_EVERY_S = 1.0
# Placements of one replica whose node offered a port another replica took meanwhile (Ray runtime).
NODE_PORT_TRIES = 3


class StartPhases(SupervisorBase):
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
            node_host, port, sidecar_ports = await self._ports(spec)
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
                    sidecar_ports=sidecar_ports,
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
            if isinstance(self.runtime, PlacingRuntime):  # seconds on a busy cluster: off the loop
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
        host = self.ref.extra.get("host") or node_host or LOOPBACK  # the Ray runtime's --replica-address
        self._set(pid=self.ref.pid, start_ticks=self.ref.start_ticks, port=port, node=node, host=host)
        self._event(row, "Started", _started(launch, self.ref, port))

    async def _ports(self, spec: ServiceSpec) -> tuple[str | None, int, dict[int, int]]:
        """The replica's address (None: this machine's loopback), its port, and a host port for
        each port the other containers name (container port → host port), stored in the row at
        once: free on the server's machine, or, with a placing runtime (Ray), chosen free on the
        node Ray placed the replica on."""
        sides = _sidecar_container_ports(spec)
        if not isinstance(self.runtime, PlacingRuntime):
            # No await from here to the port being stored: two replicas never pick the same port.
            used = {r.port for r in self.store.replicas() if r.port is not None}
            ports = pick_ports(1 + len(sides), used)
            return None, ports[0], dict(zip(sides, ports[1:], strict=True))
        demand = demand_of(spec)
        for _ in range(NODE_PORT_TRIES):
            reps = self.store.replicas()
            avoid = {r.port for r in reps if r.port is not None}
            siblings = Counter(  # the service's other replicas by node: the spread hint
                r.node
                for r in reps
                if r.service == spec.name and r.node and r.id != self.rid and not r.stopping
            )
            chosen = await asyncio.to_thread(
                self.runtime.place, self.rid, demand, 1 + len(sides), avoid, siblings
            )
            # No await from this check to the row's write: a replica placed meanwhile on the same
            # address with the same port (the nodes of one machine) makes this one ask again.
            others = (
                (r.host or LOOPBACK, r.port) for r in self.store.replicas() if r.port and r.id != self.rid
            )
            if port_clash(chosen, others) is None:
                self._set(port=chosen.ports[0], host=chosen.host)
                return chosen.host, chosen.ports[0], dict(zip(sides, chosen.ports[1:], strict=True))
        raise OSError(f"the replica's node offered ports other replicas took, {NODE_PORT_TRIES} times")

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

    async def _wait_ready(self, spec: ServiceSpec, *, promoted: bool = False) -> None:
        """Probe (the startup role of :func:`checks_of`) until the replica answers; _Failure if its
        process exits or it does not get ready within the startup timeout. ``promoted``: a warmed
        standby just thawed, probed at once (its check's initial delay is a start's, not a thaw's)."""
        checks = checks_of(spec.main)
        check = checks.startup
        tracker = ProbeTracker.for_check(check, started_at=self.clock.now())
        tracker.startup_timeout_s = checks.startup_timeout_s
        if promoted:
            tracker.initial_delay_s = 0.0
        # While starting, probe often: every fraction of a second shaved here is cold start.
        tracker.period_s = min(tracker.period_s, STARTUP_PROBE_PERIOD_S)
        row = self._row()
        while True:
            assert self.ref is not None
            if not await self._alive():
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
        except UserFileError as exc:  # the file itself: the message names the field
            raise _Failure("WarmupFailed", str(exc)) from None
        except (OSError, ValueError) as exc:
            raise _Failure("WarmupFailed", f"warm_up_data_path: {exc}") from None
        report = await self.cfg.warmup(row.host, row.port, requests, timeout_s=WARMUP_REQUEST_TIMEOUT_S)
        summary = f"warmup sent {report.sent} requests, {report.failed} failed"
        if report.sent and report.failed == report.sent:
            # Not one warmup request worked: this replica is broken, not merely cold.
            first = report.errors[0] if report.errors else ""
            raise _Failure("WarmupFailed", f"{summary}: {first}")
        self._event(row, "Warmed", summary, warning=not report.ok)

    def _cold_start_done(self, row: ReplicaRow) -> Mapping[str, float | None]:
        spans = breakdown(row.phase_times)
        cold = {**(row.cold_start or {}), **spans}
        self._set(cold_start=cold)
        self.store.record_cold_start(row.service, row.version, row.id, start_record(cold))
        if self.cfg.on_ready is not None:
            self.cfg.on_ready(row.service, spans)
        return spans

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


def _sidecar_container_ports(spec: ServiceSpec) -> list[int]:
    """The ports the other containers name that need a host port of their own (in order)."""
    out: list[int] = []
    for side in spec.containers[1:]:
        if "port" in side.model_fields_set and side.port != spec.main.port and side.port not in out:
            out.append(side.port)
    return out


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


def _started(launch: LaunchSpec, ref: ProcessRef, port: int) -> str:
    """The Started event's message: what runs, where it listens, its memory limit."""
    if launch.container is not None:
        return f"container {launch.container.name} (process {ref.pid}) published on port {port}"
    what = f"process {ref.pid} listening on port {port}"
    if ref.extra.get("node"):
        what += f" on Ray node {ref.extra['node'][:12]}"
    if launch.memory_limit_mb is not None:
        what += f"; memory limited to {launch.memory_limit_mb} MB by {MEMORY_LIMIT_HOW}"
    return what
