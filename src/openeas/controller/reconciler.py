"""The reconciler: converge replicas to the desired state in the store.

Level-triggered: every pass (each `tick_s`, or at once after `wake()`) re-reads services and
replicas and takes the next step: it creates replica rows and marks replicas `stopping` as
`plan_rollout` says, stops every replica of a deleted service and purges the service once none
is left. It never waits on a replica: every replica row gets one `ReplicaSupervisor` task, which
starts the replica, or adopts the process an earlier control plane left running. Before the
first pass it asks the runtime for the replica processes of this data dir and kills those no row
accounts for (`openeas.runtime.base.orphans`), so a crash leaves no orphans. It reaches processes
only through the `Runtime` and waits only through `SupervisorConfig.clock`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from openeas.controller.capacity import (
    DEFAULT_CPU,
    DEFAULT_MEMORY_MB,
    Admission,
    Claim,
    Resources,
    admit,
    node_capacity,
    request_of,
)
from openeas.controller.prefetch import Prefetcher
from openeas.controller.replica import ReplicaSupervisor, SupervisorConfig
from openeas.controller.rollout import ReplicaView, RolloutPlan, plan_rollout
from openeas.errors import NotFound
from openeas.kernel.clock import set_from_any_thread
from openeas.kernel.states import ReplicaPhase, ServiceState, desired_replicas
from openeas.runtime import Runtime
from openeas.runtime import stop as stop_process
from openeas.runtime.base import kill_orphans
from openeas.runtime.select import Runtimes
from openeas.spec import ServiceSpec
from openeas.storage import NodeCache
from openeas.storage.cache_index import keys_in_use
from openeas.store import ServiceRow, Store
from openeas.store.replica_states import ReplicaState, replica_states
from openeas.store.spec_cache import SpecCache

log = logging.getLogger("openeas.reconciler")


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime | Runtimes,
        cfg: SupervisorConfig,
        *,
        tick_s: float = 0.25,
        replica_load: Callable[[], Mapping[str, int]] | None = None,
        capacity: Resources | None = None,
    ) -> None:
        self.store = store
        self.runtimes = runtime if isinstance(runtime, Runtimes) else Runtimes(runtime)
        self.cfg = cfg
        self.cache = NodeCache(cfg.data_dir / "cache", limit_bytes=cfg.cache_limit_bytes)
        # The current version's object-storage mounts, copied when it is created (controller/prefetch.py).
        self.prefetch = Prefetcher(store, self.runtimes, cfg, self.cache)
        self.tick_s = tick_s  # seconds between passes when nothing wakes the reconciler
        self.clock = cfg.clock
        # Requests in flight per replica id (the gateway's view): which replica a scale-in stops.
        self.replica_load = replica_load or (lambda: {})
        self.supervisors: dict[str, ReplicaSupervisor] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `run` runs on (for `wake`)
        # Cores and memory replicas may request in all (controller/capacity.py): the node's own by default.
        self.capacity = capacity or node_capacity()
        self.admitted: set[str] = set()  # replica ids holding their share of the node
        self._pending_said: dict[str, str] = {}  # service → the last "replicas wait" event written
        # Each service's current spec, parsed once; the API's service list reads it too.
        self.specs = SpecCache(store)
        # replica id → when a pass first saw it Ready (the clock's seconds): the refill's settle
        self._ready_seen: dict[str, float] = {}
        # What a replica of (service, version, created_at) requests: a version never changes, so
        # admission reads and parses each spec once, not every pass (1,000 services made 1,000
        # reads and parses a pass: bench/cluster.py). created_at: the service's, None once purged.
        self._requests: dict[tuple[str, int, float | None], Resources] = {}
        self._created: dict[str, float] = {}  # service → its created_at, as of the last pass
        self._load: Mapping[str, int] | None = None  # replica_load() as read in this pass, if it was

    def wake(self) -> None:
        """Ask for a pass now; safe from any thread. The API calls this after writing desired
        state, from a worker thread of its own: there an ``Event.set`` would not wake the loop
        until its next timer (up to a supervisor's 0.1 s poll), which a standby's promotion pays."""
        set_from_any_thread(self._wake, self._loop)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        if any(rt.name == "ray" for rt in self.runtimes.all()):
            # off the loop: the scan asks every replica actor (a round trip each, a second or more
            # on a loaded machine), which held a new active's API for seconds after a takeover
            await asyncio.to_thread(self.kill_orphans)
        else:
            self.kill_orphans()  # a read of /proc (or one container listing)
        while not stop.is_set():
            # Cleared before the pass: a wake() during it asks for another pass, it is not lost.
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")
            await self.clock.sleep(self.tick_s, until=self._wake)

    def kill_orphans(self) -> list[int]:
        """Kill the replica processes of this data dir that no replica row accounts for; their pids."""
        known = {r.id: r.pid for r in self.store.replicas()}
        killed = [pid for rt in self.runtimes.all() for pid in kill_orphans(rt, self.cfg.data_dir, known)]
        if killed:
            log.warning("killed %d orphan replica processes: %s", len(killed), killed)
        return killed

    def _spec(self, svc: ServiceRow) -> ServiceSpec:
        return self.specs.current(svc)

    def reconcile_once(self) -> None:
        """One pass, without cyclic garbage collection: a pass makes tens of thousands of
        short-lived objects (views, claims) that the collector, set off by their allocation, would
        promote and walk with the whole heap (bench/cluster.py at 10,000 replicas: 0.2-0.3 s of a
        0.45 s pass when a full collection fell in it); freed by their counts at its end, they
        never reach the old generation. Process-wide: a pause that found it disabled leaves it so."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._pass()
        finally:
            if enabled:
                gc.enable()

    def _pass(self) -> None:
        services = {s.name: s for s in self.store.list_services()}
        self.specs.keep_only(services.values())
        self._created = {name: s.created_at for name, s in services.items()}
        born = set(self._created.items())
        for key in [k for k in self._requests if (k[0], k[2]) not in born]:
            del self._requests[key]
        replicas = replica_states(self.store)  # only the columns a pass reads (one core-SQL query)
        now = self.clock.now()
        ready = {r.id for r in replicas if r.phase == ReplicaPhase.READY}
        self._ready_seen = {rid: self._ready_seen.get(rid, now) for rid in ready}
        by_service: dict[str, list[ReplicaView]] = {}
        for r in replicas:
            by_service.setdefault(r.service, []).append(
                ReplicaView(
                    id=r.id,
                    version=r.version,
                    phase=r.phase,
                    stopping=bool(r.stopping),
                    created_at=r.created_at,
                    standby=bool(r.standby),
                    ready_at=self._ready_seen.get(r.id),
                    node=r.node,
                )
            )
        self._load = None  # the gateways' replica load, read once in this pass if a plan needs it
        wrote = False  # this pass changed replica rows: admission reads them again
        for name, svc in services.items():
            views = by_service.get(name, [])
            if svc.state == ServiceState.DELETING:
                for v in views:
                    self._request_stop(v.id)
                if not views:
                    self.store.purge_service(name)
                    self.store.record_event(name, "Deleted", "all replicas stopped; service deleted")
                wrote = True
                continue
            desired = desired_replicas(svc.state, svc.desired_replicas)
            spec = self._spec(svc)
            if svc.state != ServiceState.STOPPED:
                self.prefetch.ensure(name, svc.current_version, spec)
            plan = self._plan(svc, spec, views, desired, now)
            for rid in plan.promote:
                self._promote(rid)
            for rid in plan.stop:
                self._request_stop(rid)
            for i in range(plan.create + plan.create_standby):
                root = self.cfg.data_dir / "replicas"
                self.store.add_replica(name, svc.current_version, workdir_root=root, standby=i >= plan.create)
            wrote = wrote or bool(plan.promote or plan.stop or plan.create or plan.create_standby)
        for r in replicas:
            if r.service not in services:
                self._request_stop(r.id)
                wrote = True
        # Every replica row gets exactly one supervisor (new rows and rows adopted after a restart).
        # (The pass runs without a pause: the rows read above are current unless it wrote.)
        rows = replica_states(self.store) if wrote else replicas
        for r in rows:
            if r.id not in self.tasks:
                self._supervise(r.id, stopping=bool(r.stopping))
        # In the same pass (no await in between): a new supervisor's gate is closed before it runs.
        self._apply_admission(rows)
        if self.cache.stats.dirty:  # something was copied: keep the node's cache within its limit
            # (the full rows: a key in use is in a replica's cold-start record)
            evicted = self.cache.enforce(keys_in_use(self.store.replicas()), time.time()).evict
            if evicted:
                log.info("node cache: evicted %d entries over the limit", len(evicted))
        for rid, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[rid]
                self.supervisors.pop(rid, None)

    def _plan(
        self, svc: ServiceRow, spec: ServiceSpec, views: list[ReplicaView], desired: int, now: float
    ) -> RolloutPlan:
        """The service's next step. Requests in flight only choose *which* replicas a scale-in
        stops (never how many, nor anything else): planned without them first, and again with
        the gateways' load (read at most once a pass) only when the plan stops something."""
        rs = spec.metadata.rolling_strategy

        def plan_of(vs: list[ReplicaView]) -> RolloutPlan:
            return plan_rollout(
                vs,
                current_version=svc.current_version,
                desired=desired,
                max_surge=rs.max_surge,
                max_unavailable=rs.max_unavailable,
                standby=spec.metadata.standby.replicas if svc.state == ServiceState.RUNNING else 0,
                now=now,
            )

        plan = plan_of(views)
        if not plan.stop:
            return plan
        if self._load is None:
            self._load = self.replica_load()
        load = self._load
        return plan_of([replace(v, in_flight=load.get(v.id, 0)) for v in views])

    def admission(self, rows: list[ReplicaState]) -> Admission:
        """Admit the replicas (oldest first) on this node's capacity; see controller/capacity.py.
        A replica holds its share once admitted, and when it has a process or left Pending (one
        adopted after a restart); a stopping one that holds nothing asks for nothing."""
        claims = []
        for r in sorted(rows, key=lambda r: (r.created_at, r.id)):
            holds = r.id in self.admitted or r.pid is not None or r.phase != ReplicaPhase.PENDING
            if r.stopping and not holds:
                continue
            claims.append(Claim(id=r.id, request=self._request(r.service, r.version), holds=holds))
        return admit(claims, self.capacity)

    def _request(self, service: str, version: int) -> Resources:
        """What a replica of ``service`` at ``version`` requests (read once per version)."""
        key = (service, version, self._created.get(service))
        request = self._requests.get(key)
        if request is None:
            spec = self.specs.cached((service, version, key[2])) if key[2] is not None else None
            try:
                request = request_of(spec or self.store.version_spec(service, version))
            except NotFound:  # its service was purged under it: it only stops now
                request = Resources(cpu=DEFAULT_CPU, memory_mb=DEFAULT_MEMORY_MB)
            self._requests[key] = request
        return request

    def _apply_admission(self, rows: list[ReplicaState]) -> None:
        decision = self.admission(rows)
        self.admitted = set(decision.admitted)
        for rid, sup in self.supervisors.items():
            if rid in decision.admitted:
                sup.gate.set(None)
            elif rid in decision.pending:
                sup.gate.set(decision.pending[rid])
        waiting: dict[str, list[str]] = {}
        for r in rows:
            if r.id in decision.pending:
                waiting.setdefault(r.service, []).append(decision.pending[r.id])
        for service, reasons in waiting.items():
            said = f"{len(reasons)} replicas wait for capacity: {reasons[0]}"
            if self._pending_said.get(service) != said:
                self.store.record_event(service, "InsufficientCapacity", said, type="Warning")
        self._pending_said = {s: f"{len(r)} replicas wait for capacity: {r[0]}" for s, r in waiting.items()}

    def _supervise(self, rid: str, *, stopping: bool) -> None:
        sup = ReplicaSupervisor(rid, self.store, self.runtimes, self.cache, self.cfg)
        if stopping:
            sup.request_stop()
        self.supervisors[rid] = sup
        self.tasks[rid] = asyncio.get_running_loop().create_task(sup.run(), name=f"replica-{rid}")

    def _promote(self, rid: str) -> None:
        """A standby goes into routing: its supervisor thaws it, probes it and marks it Ready."""
        self.store.update_replica(rid, standby=False)
        sup = self.supervisors.get(rid)
        if sup is not None:
            sup.promote()

    def _request_stop(self, rid: str) -> None:
        row = self.store.get_replica(rid)
        if row is not None and not row.stopping:
            self.store.update_replica(rid, stopping=True)
        sup = self.supervisors.get(rid)
        if sup is not None:
            sup.request_stop()

    async def shutdown(self, *, stop_replicas: bool) -> None:
        """Server exit: cancel the supervisors. Replicas keep their rows (desired state is
        unchanged). Without `stop_replicas` their processes keep running, to be adopted by the
        next start; with it they are stopped (SIGTERM → grace → SIGKILL, no drain: the gateway
        goes with the server) and their rows reset to Pending, to be started again."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if stop_replicas:
            for sup in self.supervisors.values():
                sup.thaw()  # a frozen standby would hold its SIGTERM until the SIGKILL
            refs = [(s.runtime, s.ref, s.grace_s) for s in self.supervisors.values() if s.ref is not None]
            await asyncio.gather(*(stop_process(rt, ref, grace, clock=self.clock) for rt, ref, grace in refs))
            for rt, ref, _ in refs:
                rt.forget(ref)
            for r in self.store.replicas():
                if r.phase == ReplicaPhase.STOPPED:  # cancelled between Stopped and its deletion
                    self.store.delete_replica(r.id)
                    continue
                self.store.update_replica(
                    r.id,
                    phase=ReplicaPhase.PENDING,
                    phase_times={},
                    pid=None,
                    start_ticks=None,
                    message="stopped with the server",
                )
