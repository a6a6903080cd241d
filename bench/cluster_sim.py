"""The simulated cluster of bench/cluster.py: a store filled fast, a PostgreSQL of its own, one
reconcile pass over it, and the store's writes during a rollout.

Not run by itself: ``python bench/cluster.py`` runs these parts (``--only reconcile|rollout``).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # PostgreSQL is started as the tests start it (tests/pg_fixtures.py)

from openeas.controller.capacity import Resources  # noqa: E402
from openeas.controller.reconciler import Reconciler  # noqa: E402
from openeas.controller.supervisor_base import SupervisorConfig  # noqa: E402
from openeas.gateway.routing.source import routing_source  # noqa: E402
from openeas.kernel.clock import FakeClock  # noqa: E402
from openeas.kernel.states import ReplicaPhase, ServiceState  # noqa: E402
from openeas.runtime.fake import FakeRuntime  # noqa: E402
from openeas.spec import parse_spec  # noqa: E402
from openeas.store import Store  # noqa: E402
from openeas.store.db import _stored  # noqa: E402
from openeas.store.routing import route_settings  # noqa: E402
from openeas.store.schema import ReplicaRow, ServiceRow, VersionRow  # noqa: E402
from openeas.telemetry.gateway_stats import GatewayStats, ReplicaSample  # noqa: E402

NODES = 200  # simulated nodes the replicas are spread over (replicas.node)
GATEWAYS = 20  # simulated gateways: their replica reports feed the pass (in-flight per replica)
RECONCILE_GOAL_S = 1.0  # the bound for one reconcile pass over 10,000 replicas


def spec_of(name: str, per_service: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "instance": per_service},
        "containers": [{"command": "serve --port 8000", "port": 8000}],
        "token": f"token-{name}-abcdef0123",
    }


def populate(store: Store, replicas: int, per_service: int) -> list[str]:
    """``replicas`` Ready replicas, ``per_service`` per service, on NODES nodes; their ids. Rows
    are written in bulk (two transactions), as the store's own methods would write them."""
    services = max(1, replicas // per_service)
    now = time.time()
    proto = parse_spec(spec_of("s00000", per_service))
    stored, route = _stored(proto, store.cipher), route_settings(proto).to_dict()
    with store.session() as s:
        for i in range(services):
            name = f"s{i:05d}"
            token = store.cipher.encrypt(f"token-{name}-abcdef0123")
            s.add(ServiceRow(name=name, state=ServiceState.RUNNING.value, current_version=1,
                             desired_replicas=per_service, token_enc=token, created_at=now,
                             updated_at=now))  # fmt: skip
        s.flush()
        for i in range(services):
            s.add(VersionRow(service=f"s{i:05d}", version=1, spec=stored, route=route, created_at=now))
    ids = []
    with store.session() as s:
        for n in range(replicas):
            service = f"s{n % services:05d}"
            rid = f"{service}-{n:08x}"
            ids.append(rid)
            s.add(ReplicaRow(id=rid, service=service, version=1, port=20000 + n % 40000, pid=100000 + n,
                             node=f"node-{n % NODES:03d}", phase=ReplicaPhase.READY.value, phase_times={},
                             cold_start={}, workdir="", log_path="", created_at=now + n * 1e-6,
                             updated_at=now))  # fmt: skip
        store._bump_routing(s)  # every gateway reads the whole table once
    return ids


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server of this run on 127.0.0.1, started as tests/pg_fixtures.py starts the
    tests' one but durable; yields its URL (no database: ``fresh`` makes one); stopped at the end."""
    from tests.pg_fixtures import pg_bin, running_postgres

    initdb, server = pg_bin("initdb"), pg_bin("postgres")
    if initdb is None or server is None:
        raise SystemExit("PostgreSQL is not installed (scripts/setup.sh installs it)")
    with running_postgres(initdb, server, durable=True) as url:
        yield url


def fresh(server: str | None) -> str | None:
    """A new database on the PostgreSQL ``server`` (its URL); None (SQLite) stays None."""
    from tests.pg_fixtures import new_database

    return None if server is None else new_database(server)


# ---- one reconcile pass ------------------------------------------------------------------------


def reconcile_passes(replicas: int, per_service: int, passes: int, store_url: str | None) -> list[float]:
    """Seconds per pass of the real reconciler over ``replicas`` Ready replicas (steady state:
    every row has its supervisor, so a pass reads, plans and admits, and starts nothing), with
    GATEWAYS gateways' replica reports merged for its scale-in choice."""
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        data = Path(tmp)
        store = Store(data, url=fresh(store_url))
        ids = populate(store, replicas, per_service)
        clock = FakeClock()
        runtime = FakeRuntime(clock)
        cfg = SupervisorConfig(data_dir=data, oss_root=None, drain_s=1.0, base_env={}, clock=clock,
                               probe=runtime.probe, warmup=runtime.warmup)  # fmt: skip
        stats = GatewayStats(clock.now)
        for g in range(GATEWAYS):
            report = {rid: ReplicaSample(in_flight=(i + g) % 3, routed=True) for i, rid in enumerate(ids)}
            stats.observe(f"gw{g:02d}", {}, clock.now(), replicas=report)
        infinite = Resources(cpu=math.inf, memory_mb=math.inf)  # as on Ray: Ray places, not us
        rec = Reconciler(store, runtime, cfg, replica_load=lambda: stats.replica_in_flight(clock.now()),
                         capacity=infinite)  # fmt: skip
        out: list[float] = []

        async def run() -> None:
            running = asyncio.get_running_loop().create_future()  # a supervisor that never ends
            rec.tasks = dict.fromkeys(ids, running)  # type: ignore[arg-type]
            for _ in range(passes):
                t = time.perf_counter()
                rec.reconcile_once()
                out.append(time.perf_counter() - t)
            running.cancel()

        asyncio.run(run())
        assert len(store.replicas()) == replicas, "a steady pass starts or stops nothing"
        store.engine.dispose()
        return out


# ---- store writes during a rollout -------------------------------------------------------------

# The writes one replica's start makes through the store (controller/startup.py, supervisor_base.py):
# the row, four phases, their events, the cold start; and one old replica's stop (reconciler.py,
# replica.py): stopping, Draining, Stopped, the row deleted.
START_PHASES = ("Fetching", "Starting", "Warming", "Ready")


def _start_one(store: Store, service: str, version: int, port: int) -> int:
    rid = store.add_replica(service, version, workdir_root=Path("/srv/openeas/replicas")).id
    writes = 1
    for phase in START_PHASES:
        extra: dict[str, Any] = {"pid": port, "start_ticks": port, "port": port}
        extra = extra if phase == "Starting" else {}
        store.update_replica(rid, phase=phase, **extra)
        store.record_event(service, phase, f"replica {rid} {phase}", replica=rid)
        writes += 2
    store.record_cold_start(service, version, rid, {"start_s": 1.0, "total_s": 1.0})
    return writes + 1


def _stop_one(store: Store, rid: str) -> int:
    store.update_replica(rid, stopping=True)
    store.update_replica(rid, phase=ReplicaPhase.DRAINING.value)
    store.update_replica(rid, phase=ReplicaPhase.STOPPED.value)
    store.delete_replica(rid)
    return 4


def rollout_writes(replicas: int, per_service: int, writers: int, store_url: str | None) -> dict[str, float]:
    """A rollout of ``replicas`` Ready replicas to a new version, replayed through the store's
    methods by ``writers`` threads (supervisors running at once), while a gateway follows the
    routing table (polling as fast as it can). Writes/s, routing versions/s, the gateway's reads."""
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        data = Path(tmp)
        store_url = fresh(store_url)
        store = Store(data, url=store_url)
        old = populate(store, replicas, per_service)
        services = sorted({rid.rsplit("-", 1)[0] for rid in old})
        for name in services:
            store.add_version(parse_spec(spec_of(name, per_service)), scale=False)
        work = [(i, rid) for i, rid in enumerate(old)]
        lock, writes, done = threading.Lock(), [0], threading.Event()
        failed: list[str] = []  # replicas whose start or stop a store error cut short

        def writer() -> None:
            n = 0
            while True:
                with lock:
                    if not work:
                        break
                    i, rid = work.pop()
                try:
                    n += _start_one(store, rid.rsplit("-", 1)[0], 2, 30000 + i)
                    n += _stop_one(store, rid)
                except Exception as exc:  # e.g. SQLite's "database is locked" after its busy_timeout
                    with lock:
                        failed.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            with lock:
                writes[0] += n

        source = routing_source(data, store_url)
        source.poll()
        reads: list[float] = []

        def gateway() -> None:
            while not done.is_set():
                t = time.perf_counter()
                if source.poll() is not None:
                    reads.append(time.perf_counter() - t)
                else:
                    time.sleep(0.005)

        v0 = store.routing_version()
        follower = threading.Thread(target=gateway)
        follower.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=writer) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        done.set()
        follower.join()
        source.close()
        versions = store.routing_version() - v0
        if not failed:
            routed = {r.version for r in store.replicas() if r.phase == ReplicaPhase.READY.value}
            assert routed == {2} and len(store.replicas()) == replicas, "the rollout did not complete"
        store.engine.dispose()
        reads.sort()
        return {
            "seconds": elapsed,
            "writes": writes[0],
            "writes_per_s": writes[0] / elapsed,
            "versions_per_s": versions / elapsed,
            "gateway_reads": len(reads),
            "gateway_full_reads": source.reads["full"] - 1,
            "gateway_read_p50_ms": statistics.median(reads) * 1000 if reads else math.nan,
            "gateway_read_max_ms": reads[-1] * 1000 if reads else math.nan,
            "failed": len(failed),
            "first_failure": failed[0] if failed else "",
        }
