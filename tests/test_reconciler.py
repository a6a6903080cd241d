"""The Reconciler with its supervisors, on the fake clock and the fake runtime: the orphan scan,
server shutdown with and without kept replicas, rolling updates within their bounds, delete.
No processes, no sockets, no waiting; the store is the real one (SQLite in tmp_path)."""

from __future__ import annotations

import gc
import itertools
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from openeas.controller.reconciler import Reconciler
from openeas.kernel.states import ReplicaPhase, ServiceState
from openeas.runtime.base import ReplicaProcess, orphans
from openeas.runtime.fake import Behaviour, FakeProcess
from openeas.spec import ServiceSpec
from tests.fakes import World, spec

P = ReplicaPhase
TERM, KILL = signal.SIGTERM, signal.SIGKILL


def converged(world: World, version: int, desired: int) -> bool:
    """`desired` Ready replicas of `version`, nothing else in the store or on the host."""
    rows = world.rows()
    done = all(r.version == version and r.phase == P.READY and not r.stopping for r in rows)
    return done and len(rows) == desired and len(world.runtime.live()) == desired


@pytest.mark.parametrize(
    ("found", "known", "want"),
    [
        ([ReplicaProcess(10, "a", 10)], {"a": 10}, []),
        ([ReplicaProcess(14, "a", 10)], {"a": 10}, []),
        ([ReplicaProcess(11, "x", 11)], {"a": 10}, [11]),
        ([ReplicaProcess(12, "a", 12)], {"a": None}, [12]),
        ([ReplicaProcess(13, "a", 13)], {"a": 10}, [13]),
    ],
    ids=["recorded-leader", "child-in-recorded-group", "unknown-replica", "pid-never-recorded",
         "second-process-of-a-replica"],
)
def test_orphans_are_the_processes_no_row_accounts_for(
    found: list[ReplicaProcess], known: dict[str, int | None], want: list[int]
) -> None:
    assert [p.pid for p in orphans(found, known)] == want


def _unknown(world: World, known: str) -> FakeProcess:
    return world.runtime.table[world.runtime.start(world.launch("svc-gone", 30001)).pid]


def _unrecorded(world: World, known: str) -> FakeProcess:
    return world.seed("svc", P.FETCHING, record_pid=False)[1]


def _twin(world: World, known: str) -> FakeProcess:
    return world.runtime.table[world.runtime.start(world.launch(known, 30002)).pid]


def _other_data_dir(world: World, known: str) -> FakeProcess:
    launch = world.launch("svc-gone", 30003, data_dir=world.cfg.data_dir.parent / "elsewhere")
    return world.runtime.table[world.runtime.start(launch).pid]


def _not_a_replica(world: World, known: str) -> FakeProcess:  # e.g. the gateway: data dir, no id
    launch = world.launch("x", 30004)
    launch.env.pop("OPENEAS_REPLICA_ID")
    return world.runtime.table[world.runtime.start(launch).pid]


@pytest.mark.parametrize(
    ("make", "killed"),
    [(_unknown, True), (_unrecorded, True), (_twin, True), (_other_data_dir, False), (_not_a_replica, False)],
    ids=["unknown-replica-killed", "unrecorded-pid-killed", "second-process-killed",
         "other-data-dir-kept", "non-replica-kept"],
)
async def test_orphan_scan_kills_unknown_replica_processes_and_keeps_known_ones(
    tmp_path: Path, make: Callable[[World, str], FakeProcess], killed: bool
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(spec())
    known, kept = world.seed("svc", P.READY)
    other = make(world, known)
    runtime = world.runtime.next_control_plane()  # the scan runs when a control plane starts

    assert Reconciler(world.store, runtime, world.cfg).kill_orphans() == ([other.pid] if killed else [])
    now = world.clock.now()
    assert kept.running(now) and kept.signals == []
    assert other.running(now) is not killed
    assert [s for _, s in other.signals] == ([KILL] if killed else [])


@pytest.mark.parametrize(
    ("keep", "behaviour", "signals"),
    [
        (True, Behaviour(), []),
        (False, Behaviour(term_exit_s=0.5), [TERM]),
        (False, Behaviour(term_exit_s=None), [TERM, KILL]),
    ],
    ids=["keep-replicas", "stop-replicas", "stop-replicas-that-ignore-sigterm"],
)
async def test_server_shutdown_then_next_start(
    tmp_path: Path, keep: bool, behaviour: Behaviour, signals: list[int]
) -> None:
    world = World.make(tmp_path, behaviour)
    world.store.create_service(spec(replicas=2, grace_s=3.0))
    first = world.reconciler()
    await world.clock.run_until(lambda: converged(world, 1, 2))
    await first.stop(world.clock, stop_replicas=not keep)

    procs = world.runtime.started
    assert [[s for _, s in p.signals] for p in procs] == [signals, signals]
    for p in procs:
        if KILL in signals:
            assert p.signals[1][0] - p.signals[0][0] >= 3.0  # the grace period first
    rows = world.store.replicas("svc")
    assert len(rows) == 2  # desired state and replica rows survive the server
    if keep:
        assert all(p.running(world.clock.now()) for p in procs)
        assert {(r.phase, r.pid) for r in rows} == {(P.READY, p.pid) for p in procs}
    else:
        assert world.runtime.live() == [] and world.runtime.children == {}
        assert {(r.phase, r.pid, r.message) for r in rows} == {(P.PENDING, None, "stopped with the server")}

    # The next server: kept replicas are adopted and keep serving, stopped ones start again.
    runtime = world.runtime.next_control_plane()
    seen = len(world.store.changes)
    second = world.reconciler(runtime)
    await world.clock.run_until(lambda: converged(world, 1, 2))
    assert len(runtime.started) == (0 if keep else 2)
    if keep:
        assert {c.phase for c in world.store.changes[seen:]} <= {P.READY}  # never left Ready
    await second.stop(world.clock)
    assert world.runtime.live() == []


ROLLOUTS = [
    # desired, max_surge, max_unavailable, versions deployed after the first
    pytest.param(3, 1, 0, 1, id="surge-1"),
    pytest.param(3, 0, 1, 1, id="unavailable-1"),
    pytest.param(4, 2, 1, 1, id="surge-2-unavailable-1"),
    pytest.param(2, 0, 0, 1, id="both-zero-means-surge-1"),
    pytest.param(1, 1, 0, 1, id="single-replica"),
    pytest.param(3, 1, 0, 2, id="second-update-mid-rollout"),
]


@pytest.mark.parametrize(("desired", "surge", "unavailable", "updates"), ROLLOUTS)
async def test_rollout_converges_within_surge_and_unavailable_bounds(
    tmp_path: Path, desired: int, surge: int, unavailable: int, updates: int
) -> None:
    world = World.make(tmp_path, Behaviour(ready_after_s=2.0))

    def version(tag: str) -> ServiceSpec:
        return spec(replicas=desired, max_surge=surge, max_unavailable=unavailable, tag=tag)

    world.store.create_service(version("v1"))
    running = world.reconciler()
    await world.clock.run_until(lambda: converged(world, 1, desired))

    most = desired + (surge if surge or unavailable else 1)
    seen: list[tuple[int, int, int]] = []  # (old, current, Ready) replicas not stopping, per change

    current = 2

    def check() -> None:
        nonlocal current
        live = [r for r in world.rows() if not r.stopping]
        state = (
            sum(r.version != current for r in live),
            sum(r.version == current for r in live),
            sum(r.phase == P.READY for r in live),
        )
        if not seen or seen[-1] != state:
            seen.append(state)
        assert len(live) <= most, seen
        assert state[2] >= desired - unavailable, seen
        if current < 1 + updates and state[1] and state[2] > desired - 1:
            current += 1  # the next update while this one is under way
            world.store.add_version(version(f"v{current}"))
            running.rec.wake()

    world.store.add_version(version("v2"))
    running.rec.wake()
    final = 1 + updates
    await world.clock.run_until(lambda: converged(world, final, desired), each=check, limit_s=600)

    assert max(old for old, _, _ in seen) > 0 and seen[-1] == (0, desired, desired)
    if updates == 1:  # old replicas only ever go away
        assert all(a[0] >= b[0] for a, b in itertools.pairwise(seen)), seen
    live_pids = {p.pid for p in world.runtime.live()}
    assert live_pids == {r.pid for r in world.store.replicas("svc")}
    await running.stop(world.clock)


@pytest.mark.parametrize(
    ("behaviour", "phase"),
    [
        (Behaviour(ready_after_s=None), P.STARTING),
        (Behaviour(ready_after_s=None, exit_after_s=0.5), P.FAILED),
        (Behaviour(), P.READY),
        (Behaviour(term_exit_s=None), P.READY),
    ],
    ids=["while-starting", "during-restart-backoff", "while-ready", "while-ready-ignoring-sigterm"],
)
async def test_delete_leaves_no_process_and_no_rows(tmp_path: Path, behaviour: Behaviour, phase: str) -> None:
    world = World.make(tmp_path, behaviour)
    world.store.create_service(spec(replicas=2))
    running = world.reconciler()

    def reached() -> bool:
        rows = world.rows()
        return len(rows) == 2 and all(r.phase == phase for r in rows)

    await world.clock.run_until(reached)
    world.store.update_service("svc", state=ServiceState.DELETING)
    running.rec.wake()
    await world.clock.run_until(lambda: not world.store.list_services())

    assert world.runtime.live() == [] and world.runtime.children == {}
    assert world.store.replicas() == []
    assert "Deleted" in world.reasons()
    await running.stop(world.clock)
    assert all(t.done() for t in running.rec.tasks.values())


@pytest.mark.parametrize(
    ("change", "reads"),
    [
        pytest.param(None, 1, id="same-version-read-once"),
        pytest.param("new-version", 2, id="a-new-version-read-once-more"),
        pytest.param("recreated", 2, id="deleted-and-made-again-read-again"),
    ],
)
def test_reconciler_reads_a_versions_spec_once_across_passes(
    tmp_path: Path, change: str | None, reads: int
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(spec(replicas=0))
    rec = Reconciler(world.store, world.runtime, world.cfg)
    calls: list[tuple[str, int]] = []
    real = world.store.version_spec

    def counted(name: str, version: int) -> ServiceSpec:
        calls.append((name, version))
        return real(name, version)

    world.store.version_spec = counted  # type: ignore[method-assign]
    for _ in range(3):
        rec.reconcile_once()
    if change == "new-version":
        world.store.add_version(spec(replicas=0, tag="v2"))
    elif change == "recreated":
        world.store.purge_service("svc")
        world.store.create_service(spec(replicas=0, tag="v9"))  # version 1 again, another spec
    for _ in range(3):
        rec.reconcile_once()
    assert len(calls) == reads
    svc = world.store.get_service("svc")
    assert rec._spec(svc).main.command == real("svc", svc.current_version).main.command  # never stale


# (not the newest idle: a plan blind to the load would stop the newest too)
@pytest.mark.parametrize("idle", [0, 1], ids=["oldest-idle", "middle-idle"])
async def test_scale_in_reads_the_gateways_load_only_when_it_stops_one(tmp_path: Path, idle: int) -> None:
    # A steady pass does not read the gateways' load (bench/cluster.py: a fifth of a 10,000-replica
    # pass); a scale-in reads it once and stops the replica with the fewest requests in flight.
    import asyncio

    world = World.make(tmp_path)
    world.store.create_service(spec(replicas=3))
    ids = [world.store.add_replica("svc", 1, workdir_root=tmp_path).id for _ in range(3)]
    for rid in ids:
        for phase in (P.FETCHING, P.STARTING, P.WARMING, P.READY):
            world.store.update_replica(rid, phase=phase)
    reads: list[int] = []

    def load() -> dict[str, int]:
        reads.append(1)
        assert not gc.isenabled()  # a pass runs without the cyclic collector (reconciler.py)
        return {rid: 0 if i == idle else 5 for i, rid in enumerate(ids)}

    rec = Reconciler(world.store, world.runtime, world.cfg, replica_load=load)
    running = asyncio.get_running_loop().create_future()  # supervisors that never end
    rec.tasks = dict.fromkeys(ids, running)
    for _ in range(2):
        rec.reconcile_once()
    assert reads == []
    world.store.update_service("svc", desired_replicas=2)
    rec.reconcile_once()
    running.cancel()
    assert reads == [1] and gc.isenabled()
    assert [r.id for r in world.store.replicas() if r.stopping] == [ids[idle]]
