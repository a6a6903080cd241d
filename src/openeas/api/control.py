"""The control plane as the API's routers see it: the store, desired-state writes, the views of a
service and its replicas. It writes desired state and wakes the reconciler; it never starts or
stops a process itself (the reconciler does). Built once by the server's composition root with
every collaborator it needs; the routers (api/app.py, groups, rollouts, stress, batch, cost) take it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

from openeas.api.idle import IdleWatch
from openeas.api.launch_plan import launch_plan, mount_warnings, normalized_spec
from openeas.autoscaler.loop import Autoscaler, policy_view
from openeas.controller.bake import Baker
from openeas.controller.checks import checks_of
from openeas.errors import Conflict, NotFound, SpecError
from openeas.kernel.states import ReplicaPhase, ServiceState, desired_replicas, service_status
from openeas.runtime.select import Runtimes
from openeas.spec import ServiceSpec
from openeas.storage import NodeCache
from openeas.storage.hostpaths import HostPaths, check_request_files, check_spec
from openeas.store import ReplicaRow, ServiceRow, Store
from openeas.store.spec_cache import SpecCache
from openeas.telemetry import COLD_START_SPANS, ControlMetrics
from openeas.telemetry.coldstart import startup_progress
from openeas.telemetry.gateway_stats import GatewayStats


def iso_time(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat() if t is not None else None


class ControlPlane:
    """What the API needs from the running server."""

    def __init__(
        self,
        store: Store,
        gateway_url: str,
        wake: Callable[[], None] = lambda: None,
        metrics: ControlMetrics | None = None,
        runtimes: Runtimes | None = None,
        autoscaler: Autoscaler | None = None,
        *,
        gateway_stats: GatewayStats | None = None,
        rollout_controller: Any = None,
        await_routing: Callable[[int], Any] | None = None,
        batch_wake: Callable[[], None] = lambda: None,
        host_paths: HostPaths | None = None,
        idle_watch: IdleWatch | None = None,
        node_cache: NodeCache | None = None,
        baker: Baker | None = None,
        specs: SpecCache | None = None,
    ) -> None:
        self.store = store
        # Each service's current spec, parsed once (the reconciler's: the server shares it).
        self.specs = specs or SpecCache(store)
        self.batch_wake = batch_wake  # the batch runner's wake
        # What runs replicas here (for the runtime choice that describe and dry-run show).
        self.runtimes = runtimes
        self.autoscaler = autoscaler
        self.idle_watch = idle_watch  # the idle-spend alarm (api/idle.py); None: not watched
        self.metrics = metrics or ControlMetrics(store)
        self.gateway_url = gateway_url.rstrip("/")
        self.wake = wake
        self.admin_token = store.admin_token()
        # The gateways' per-service counters: what the stress test's load view reads. None: no
        # gateway data here.
        self.gateway_stats = gateway_stats
        # Drives staged rollouts (controller/rollout_loop.py); None in tests.
        self.rollout_controller = rollout_controller
        # Waits until the gateway acknowledges a routing version (the server's
        # `openeas.gateway.routing.notify.RoutingNotifier.wait_applied`); None: no gateway to wait for.
        self.await_routing = await_routing
        # The host folders a spec may name (`--allow-host-path`, the local bucket): none by default.
        self.host_paths = host_paths or HostPaths()
        # The node cache (`/api/v1/cache`): the reconciler's; None where no replicas run here.
        self.node_cache = node_cache
        # Builds baked images (`openeas bake`, controller/bake.py); None where no replicas run here.
        self.baker = baker

    def routing_in_effect(self) -> dict[str, Any] | None:
        """After a routing change: wait (bounded) until the gateway has applied the store's current
        routing version; what it answered (``acknowledged``, ``waited_ms``, a ``warning`` naming
        the gateway that did not answer in time). None without a gateway to wait for."""
        if self.await_routing is None:
            return None
        outcome = self.await_routing(self.store.routing_version())
        return dict(outcome.to_dict())

    def check_host_paths(self, spec: ServiceSpec) -> None:
        """400 naming every spec field that would read the host outside the allowed folders."""
        if errors := check_spec(spec, self.host_paths):
            raise SpecError(errors)

    def request_file_problems(self, files: Mapping[str, str | None]) -> list[str]:
        """Every file a request names (``{field: url}``) outside the allowed folders, one line each."""
        return check_request_files(self.host_paths, files)

    def change(self, name: str, reason: str, message: str, **fields: Any) -> dict[str, Any]:
        """Write desired state (and its event) for a live service, wake the reconciler."""
        not_deleting(self.store, name)
        self.store.update_service(name, event=(reason, message), **fields)
        self.wake()
        return self.detail(name)

    def endpoint(self, name: str) -> str:
        return f"{self.gateway_url}/api/predict/{name}"

    # ---- views ----------------------------------------------------------------------------------
    def summary(self, svc: ServiceRow, replicas: list[ReplicaRow] | None = None) -> dict[str, Any]:
        reps = self.store.replicas(svc.name) if replicas is None else replicas
        live = [r for r in reps if not r.stopping]
        status = service_status(svc.state, svc.current_version, svc.desired_replicas, reps)
        return {
            "name": svc.name,
            "status": status.value,
            "version": svc.current_version,
            "desired_replicas": desired_replicas(svc.state, svc.desired_replicas),
            "ready_replicas": sum(r.phase == ReplicaPhase.READY for r in live),
            "total_replicas": len(live),
            "endpoint": self.endpoint(svc.name),
            "mode": self.mode(svc),
            "created_at": iso_time(svc.created_at),
            "updated_at": iso_time(svc.updated_at),
            "idle": self.idle_watch.view(svc.name) if self.idle_watch is not None else None,
        }

    def mode(self, svc: ServiceRow) -> str | None:
        """The service's inference mode: "async" (a queue before its replicas) or "sync"; None
        when its spec is gone meanwhile (deleted between the list and this read)."""
        try:
            return "async" if self.specs.current(svc).is_async else "sync"
        except NotFound:
            return None

    def detail(self, name: str) -> dict[str, Any]:
        svc = self.store.get_service(name)
        reps = self.store.replicas(name)
        out = self.summary(svc, reps)
        spec = self.store.version_spec(name, svc.current_version)
        out["spec"] = spec.public_dict()
        out["runtime"] = self.runtime_choice(spec)
        out["autoscaling"] = self.autoscaling(name, spec.autoscaling_policy())
        deadlines = {v: self.startup_deadline(name, v) for v in {r.version for r in reps}}
        now = time.time()
        out["replicas"] = [replica_view(r, deadlines[r.version], now) for r in reps]
        out["versions"] = self.versions(name)
        return out

    def startup_deadline(self, name: str, version: int) -> float | None:
        """Seconds a replica of the version may take from its process start to Ready."""
        try:
            return checks_of(self.store.version_spec(name, version).main).startup_timeout_s
        except NotFound:
            return None

    def runtime_choice(self, spec: ServiceSpec) -> dict[str, Any]:
        """Which runtime runs the spec's replicas on this server, and why."""
        if self.runtimes is None:
            return {
                "name": "process",
                "reason": "this control plane runs replicas as processes",
                "warnings": [],
            }
        choice = self.runtimes.choose(spec)
        return {"name": choice.name, "reason": choice.reason, "warnings": list(choice.warnings)}

    def dry_run(self, spec: ServiceSpec) -> dict[str, Any]:
        """What deploying ``spec`` would do, without doing it."""
        try:
            svc = self.store.get_service(spec.name)
        except NotFound:
            svc = None
        if svc is not None and svc.state == ServiceState.DELETING:
            raise Conflict(f"service '{spec.name}' is being deleted")
        runtime = self.runtime_choice(spec)
        return {
            "name": spec.name,
            "valid": True,
            "action": "create" if svc is None else "update",
            "version": 1 if svc is None else max(v.version for v in self.store.versions(spec.name)) + 1,
            "replicas": spec.metadata.instance if svc is None else svc.desired_replicas,
            "runtime": runtime,
            "launch": launch_plan(spec, runtime["name"], self.engine_name()),
            "accepted_unused": spec.unused_fields(),
            "warnings": list(runtime["warnings"]) + spec_warnings(spec),
            "endpoint": self.endpoint(spec.name),
            "spec": spec.public_dict(),
            "normalized_spec": normalized_spec(spec),
        }

    def engine_name(self) -> str | None:
        """ "podman" or "docker" when this server has a container engine."""
        engine = self.runtimes.engine if self.runtimes is not None else None
        return engine.split()[0] if engine else None

    def autoscaling(self, name: str, policy: Any) -> dict[str, Any] | None:
        """The autoscaler's view (metric vs target, last decision and its reason), or the bare
        policy before its first decision; None without a policy."""
        if policy is None:
            return None
        live = self.autoscaler.status(name) if self.autoscaler is not None else None
        return live or {"policy": policy_view(policy), "decision": None, "metrics": []}

    def versions(self, name: str) -> list[dict[str, Any]]:
        cur = self.store.get_service(name).current_version
        return [
            {"version": v.version, "created_at": iso_time(v.created_at), "current": v.version == cur}
            for v in self.store.versions(name)
        ]


def spec_warnings(spec: ServiceSpec) -> list[str]:
    """What deploys but may not do what the user expects."""
    out = mount_warnings(spec)
    seen = {spec.main.port: 0}
    for i, c in enumerate(spec.containers[1:], start=1):
        if "port" in c.model_fields_set:
            if c.port in seen:
                out.append(
                    f"containers[{i}].port: {c.port} is also containers[{seen[c.port]}]'s; the containers "
                    "of a replica share its network, so only one of them can listen on it"
                )
            seen.setdefault(c.port, i)
    return out


def replica_view(r: ReplicaRow, startup_deadline_s: float | None = None, now: float = 0.0) -> dict[str, Any]:
    cold = r.cold_start or {}
    progress = startup_progress(r.phase, r.phase_times or {}, startup_deadline_s, now)
    return {
        "id": r.id,
        "version": r.version,
        "phase": r.phase,
        "host": r.host,
        "port": r.port,
        "pid": r.pid,
        "restart_count": r.restart_count,
        "stopping": bool(r.stopping),
        "phase_times": {k: iso_time(v) for k, v in (r.phase_times or {}).items()},
        "runtime": r.runtime,
        "node": r.node,  # the Ray node id; None: the server's machine
        "cold_start": {k: cold.get(k) for k in COLD_START_SPANS}
        | {"fetch": cold.get("fetch"), "pull": cold.get("pull"), "prepare": cold.get("prepare")}
        | ({"promotion_s": cold["promotion_s"]} if "promotion_s" in cold else {}),  # a standby's
        "standby": bool(r.standby),
        "message": r.message,
        "startup": progress,  # Starting: seconds into the startup deadline (describe's line)
    }


def not_deleting(store: Store, name: str) -> None:
    if store.get_service(name).state == ServiceState.DELETING:
        raise Conflict(f"service '{name}' is being deleted")
