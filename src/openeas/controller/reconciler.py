"""The reconciler: converge running replicas to the desired state in the store.

Level-triggered: every pass re-reads services and replicas and takes the next step
(`plan_rollout`). It never waits on a replica; each replica has its own supervisor task. On
start it adopts replicas whose processes still run and kills replica processes of this data dir
that the store no longer knows (no orphans after a crash).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from openeas.controller.replica import ReplicaSupervisor, SupervisorConfig
from openeas.controller.rollout import ReplicaView, plan_rollout
from openeas.runtime import Runtime
from openeas.runtime import stop as stop_process
from openeas.runtime.process import read_stat
from openeas.states import ReplicaPhase, ServiceState, desired_replicas
from openeas.storage import NodeCache
from openeas.store import Store

log = logging.getLogger("openeas.reconciler")


class Reconciler:
    def __init__(
        self, store: Store, runtime: Runtime, cfg: SupervisorConfig, *, tick_s: float = 0.25
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.cfg = cfg
        self.cache = NodeCache(cfg.data_dir / "cache")
        self.tick_s = tick_s
        self.supervisors: dict[str, ReplicaSupervisor] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask for a pass now (the API calls this after writing desired state)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        kill_orphans(self.cfg.data_dir, {r.id: r.pid for r in self.store.replicas()})
        while not stop.is_set():
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)
            except TimeoutError:
                pass

    def reconcile_once(self) -> None:
        services = {s.name: s for s in self.store.list_services()}
        replicas = self.store.replicas()
        by_service: dict[str, list[ReplicaView]] = {}
        for r in replicas:
            by_service.setdefault(r.service, []).append(
                ReplicaView(
                    id=r.id,
                    version=r.version,
                    phase=r.phase,
                    stopping=bool(r.stopping),
                    created_at=r.created_at,
                )
            )
        for name, svc in services.items():
            views = by_service.get(name, [])
            if svc.state == ServiceState.DELETING:
                for v in views:
                    self._request_stop(v.id)
                if not views:
                    self.store.purge_service(name)
                    self.store.record_event(name, "Deleted", "all replicas stopped; service deleted")
                continue
            desired = desired_replicas(svc.state, svc.desired_replicas)
            spec = self.store.version_spec(name, svc.current_version)
            rs = spec.metadata.rolling_strategy
            plan = plan_rollout(
                views,
                current_version=svc.current_version,
                desired=desired,
                max_surge=rs.max_surge,
                max_unavailable=rs.max_unavailable,
            )
            for rid in plan.stop:
                self._request_stop(rid)
            for _ in range(plan.create):
                self.store.add_replica(name, svc.current_version, workdir_root=self.cfg.data_dir / "replicas")
        for r in replicas:
            if r.service not in services:
                self._request_stop(r.id)
        # Every replica row gets exactly one supervisor (new rows and rows adopted after a restart).
        for r in self.store.replicas():
            if r.id not in self.tasks:
                self._supervise(r.id, stopping=bool(r.stopping))
        for rid, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[rid]
                self.supervisors.pop(rid, None)

    def _supervise(self, rid: str, *, stopping: bool) -> None:
        sup = ReplicaSupervisor(rid, self.store, self.runtime, self.cache, self.cfg)
        if stopping:
            sup.stop_requested.set()
        self.supervisors[rid] = sup
        self.tasks[rid] = asyncio.get_running_loop().create_task(sup.run(), name=f"replica-{rid}")

    def _request_stop(self, rid: str) -> None:
        row = self.store.get_replica(rid)
        if row is not None and not row.stopping:
            self.store.update_replica(rid, stopping=True)
        sup = self.supervisors.get(rid)
        if sup is not None:
            sup.stop_requested.set()

    async def shutdown(self, *, stop_replicas: bool) -> None:
        """Server exit. Replicas keep their rows (desired state is unchanged); with
        `stop_replicas` their processes are stopped and will be started again on next start."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if stop_replicas:
            sups = [s for s in self.supervisors.values() if s.ref is not None]
            await asyncio.gather(*(stop_process(self.runtime, s.ref, s.grace_s) for s in sups if s.ref))
            for r in self.store.replicas():
                self.store.update_replica(
                    r.id,
                    phase=ReplicaPhase.PENDING,
                    phase_times={},
                    pid=None,
                    start_ticks=None,
                    message="stopped with the server",
                )


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k in (b"OPENEAS_DATA_DIR", b"OPENEAS_REPLICA_ID"):
            out[k.decode()] = v.decode(errors="replace")
    return out


def replica_processes(data_dir: Path) -> list[tuple[int, str, int]]:
    """`(pid, replica id, process group)` of every live replica process started for `data_dir`.

    Only replica processes carry a replica id; the server and gateway may share the data-dir env.
    """
    out = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        env = _environ(pid)
        rid = env.get("OPENEAS_REPLICA_ID")
        if rid is None or env.get("OPENEAS_DATA_DIR") != str(data_dir):
            continue
        stat = read_stat(pid)
        if stat is not None and stat[0] != "Z":
            out.append((pid, rid, stat[1]))
    return out


def kill_orphans(data_dir: Path, known: Mapping[str, int | None]) -> list[int]:
    """Kill replica processes of this data dir that no replica row accounts for.

    `known` maps each replica id in the store to the pid it recorded (its process group, since
    replicas start in a session of their own). A process is an orphan when its replica id is
    unknown, when its row recorded no pid (the server died between start and write), or when it
    is not in the recorded process group (a second process for the same replica).
    """
    killed = []
    for pid, rid, pgid in replica_processes(data_dir):
        if known.get(rid) == pgid:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    if killed:
        log.warning("killed %d orphan replica processes: %s", len(killed), killed)
    return killed
