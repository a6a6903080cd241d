"""What the supervisor and reconciler unit tests share: a `World` that wires a real store (in
tmp_path) to the fake clock and fake runtime, a store that records every replica change on the
fake clock, and spec builders.

The fakes themselves live in the package (FakeClock in openeas.kernel.clock, FakeRuntime in
openeas.runtime.fake), so
that future work outside the tests can use them too; only test plumbing is here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack

from openeas.controller.reconciler import Reconciler
from openeas.controller.replica import ReplicaSupervisor, SupervisorConfig
from openeas.kernel.clock import FakeClock
from openeas.kernel.states import ReplicaPhase
from openeas.runtime.base import LaunchSpec
from openeas.runtime.fake import Behaviour, FakeProcess, FakeRuntime
from openeas.runtime.identity import node_tag
from openeas.spec import ServiceSpec, parse_spec
from openeas.storage import NodeCache
from openeas.store import ReplicaRow, Store
from openeas.store.schema import ReplicaFields

T = TypeVar("T")
P = ReplicaPhase
DRAIN_S = 1.0  # SupervisorConfig.drain_s in these tests


def spec(
    name: str = "svc",
    *,
    replicas: int = 1,
    grace_s: float = 5.0,
    startup_timeout_s: float = 30.0,
    period_s: float = 1.0,
    failure_threshold: int = 3,
    max_surge: int = 1,
    max_unavailable: int = 0,
    tag: str = "v1",
) -> ServiceSpec:
    """A service whose replicas listen on container port 8000; `tag` tells versions apart."""
    return parse_spec(
        {
            "metadata": {
                "name": name,
                "instance": replicas,
                "eas": {"termination_grace_period": grace_s},
                "rolling_strategy": {"max_surge": max_surge, "max_unavailable": max_unavailable},
            },
            "containers": [
                {
                    "command": f"serve --port 8000 --tag {tag}",
                    "port": 8000,
                    "health_check": {
                        "http_get": {"path": "/health"},
                        "period_seconds": period_s,
                        "failure_threshold": failure_threshold,
                        "startup_timeout_seconds": startup_timeout_s,
                    },
                }
            ],
        }
    )


async def drive(clock: FakeClock, aw: Coroutine[Any, Any, T]) -> T:
    """Run `aw` to its end on the fake clock (other tasks on the loop run along)."""
    task = asyncio.ensure_future(aw)
    await clock.run_until(task.done)
    return task.result()


@dataclass(frozen=True)
class Change:
    """A replica row right after one update, at the fake clock's time."""

    t: float
    rid: str
    phase: str
    restart_count: int
    stopping: bool
    pid: int | None
    message: str | None


class RecordingStore(Store):
    """The real store, plus a log of every replica update stamped with the fake clock."""

    def __init__(self, data_dir: Path, clock: FakeClock) -> None:
        super().__init__(data_dir)
        self.clock = clock
        self.changes: list[Change] = []

    def update_replica(self, rid: str, **fields: Unpack[ReplicaFields]) -> ReplicaRow | None:
        row = super().update_replica(rid, **fields)
        if row is not None:
            self.changes.append(
                Change(self.clock.now(), rid, row.phase, row.restart_count, bool(row.stopping), row.pid, row.message)
            )
        return row

    def between(self, first: Change, end: Change) -> list[Change]:
        """The updates of `first`'s replica from `first` up to (not including) `end`."""
        mine = [c for c in self.changes if c.rid == first.rid]
        return mine[next(i for i, c in enumerate(mine) if c is first) : mine.index(end)]

    def phases(self, rid: str) -> list[Change]:
        """The updates of `rid` that changed its phase, in order."""
        out: list[Change] = []
        for c in self.changes:
            if c.rid == rid and (not out or out[-1].phase != c.phase):
                out.append(c)
        return out


@dataclass
class World:
    """One data dir with a real store, a fake clock and a fake runtime (the host's processes)."""

    clock: FakeClock
    runtime: FakeRuntime
    store: RecordingStore
    cfg: SupervisorConfig
    _rows: tuple[tuple[str, int], list[ReplicaRow]] | None = None

    @classmethod
    def make(cls, tmp_path: Path, behaviour: Behaviour = Behaviour()) -> World:
        clock = FakeClock()
        runtime = FakeRuntime(clock, behaviour)
        data_dir = tmp_path / "data"
        store = RecordingStore(data_dir, clock)
        cfg = SupervisorConfig(
            data_dir=data_dir,
            oss_root=None,
            drain_s=DRAIN_S,
            base_env={},
            clock=clock,
            probe=runtime.probe,  # answers from the host's process table, whoever started them
            warmup=runtime.warmup,
        )
        return cls(clock, runtime, store, cfg)

    # ---- driving ----------------------------------------------------------------------------
    async def drive(self, aw: Coroutine[Any, Any, T]) -> T:
        return await drive(self.clock, aw)

    def supervise(self, rid: str, runtime: FakeRuntime | None = None) -> tuple[ReplicaSupervisor, asyncio.Task[None]]:
        cache = NodeCache(self.cfg.data_dir / "cache")
        sup = ReplicaSupervisor(rid, self.store, runtime or self.runtime, cache, self.cfg)
        return sup, asyncio.get_running_loop().create_task(sup.run())

    def reconciler(self, runtime: FakeRuntime | None = None) -> Running:
        rec = Reconciler(self.store, runtime or self.runtime, self.cfg)
        stop = asyncio.Event()
        return Running(rec, stop, asyncio.get_running_loop().create_task(rec.run(stop)))

    # ---- facts ------------------------------------------------------------------------------
    def rows(self, service: str = "svc") -> list[ReplicaRow]:
        """The replica rows, read again only after a replica update (checks run every step, and
        every row added or deleted has an update at the same instant: Fetching, Stopped)."""
        key = (service, len(self.store.changes))
        if self._rows is None or self._rows[0] != key:
            self._rows = (key, self.store.replicas(service))
        return self._rows[1]

    def replica(self, service: str = "svc") -> ReplicaRow:
        rows = self.store.replicas(service)
        assert len(rows) == 1, rows
        return rows[0]

    def reasons(self, service: str = "svc") -> list[str]:
        return [e.reason for e in self.store.events(service, limit=1000)]

    # ---- a replica an earlier control plane left behind ---------------------------------------
    def seed(self, service: str, phase: ReplicaPhase, *, record_pid: bool = True) -> tuple[str, FakeProcess]:
        """A replica row in `phase` whose process runs on the host (started by `self.runtime`)."""
        svc = self.store.get_service(service)
        row = self.store.add_replica(service, svc.current_version, workdir_root=self.cfg.data_dir / "replicas")
        for step in (P.FETCHING, P.STARTING, P.WARMING, P.READY):
            if phase in (P.PENDING, row.phase):
                break
            row = self.store.update_replica(row.id, phase=step) or row
        port = 20000 + len(self.runtime.table)
        ref = self.runtime.start(self.launch(row.id, port))
        if record_pid:
            self.store.update_replica(row.id, pid=ref.pid, start_ticks=ref.start_ticks, port=port)
        return row.id, self.runtime.table[ref.pid]

    def launch(self, rid: str, port: int, data_dir: Path | None = None) -> LaunchSpec:
        """What the supervisor would start for `rid`: the identity env the orphan scan reads."""
        env = {"OPENEAS_REPLICA_ID": rid, "OPENEAS_NODE": node_tag(data_dir or self.cfg.data_dir)}
        return LaunchSpec(replica_id=rid, argv=["serve"], env=env, cwd="/", log_path="/dev/null", port=port)


@dataclass
class Running:
    """A reconciler running on the fake clock."""

    rec: Reconciler
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self, clock: FakeClock, *, stop_replicas: bool = True) -> None:
        """What the server does on exit: end the passes, then shut the reconciler down."""
        self.stop_event.set()
        self.rec.wake()
        await clock.run_until(self.task.done)
        await drive(clock, self.rec.shutdown(stop_replicas=stop_replicas))
