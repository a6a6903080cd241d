"""Standby replicas (metadata.standby; docs/cold-start.md): the pure plan (promote, refill, old
versions), the spec's defaults and errors, and the supervisor and reconciler on the fake clock
and the fake runtime (frozen = SIGSTOP to the group, thawed with SIGCONT on promotion and before
any SIGTERM; adoption keeps a standby parked). The store is the real one (SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openeas.controller.reconciler import Reconciler
from openeas.controller.rollout import REFILL_SETTLE_S, ReplicaView, plan_rollout
from openeas.errors import SpecError
from openeas.kernel.clock import LoopClock
from openeas.kernel.states import ReplicaPhase, check_transition
from openeas.spec import ServiceSpec, parse_spec
from openeas.spec.standby import Standby
from tests.fakes import World, spec

P = ReplicaPhase
STOP, CONT, TERM = signal.SIGSTOP, signal.SIGCONT, signal.SIGTERM


NOW = 1_000.0  # the plans' `now`, seconds


def reps(*specs: str) -> list[ReplicaView]:
    """'id:version:phase[:sb][:rN]': sb marks a standby, rN one that became Ready N seconds ago."""
    out = []
    for i, s in enumerate(specs):
        parts = s.split(":")
        ago = next((float(p[1:]) for p in parts[3:] if p.startswith("r")), None)
        out.append(
            ReplicaView(
                id=parts[0], version=int(parts[1]), phase=parts[2], stopping=False,
                created_at=float(i), standby="sb" in parts[3:], ready_at=None if ago is None else NOW - ago,
            )
        )
    return out


PLANS = [
    # (replicas, current, desired, standby) → (create, create_standby, promote, stop)
    pytest.param([], 1, 1, 1, (1, 1, (), ()), id="fresh-deploy-creates-the-pool-too"),
    pytest.param(["a:1:Ready", "s:1:Standby:sb"], 1, 1, 1, (0, 0, (), ()), id="steady"),
    # the pass that promotes refills nothing: a refill's start would slow the promotion down
    pytest.param(["a:1:Ready", "s:1:Standby:sb"], 1, 2, 1, (0, 0, ("s",), ()), id="scale-out-promotes"),
    # promoted (no longer a standby) but not Ready yet: still no refill; once Ready, the refill
    pytest.param(["a:1:Ready", "s:1:Standby"], 1, 2, 1, (0, 0, (), ()), id="refill-waits-for-the-promotion"),
    pytest.param(["a:1:Ready", "s:1:Ready"], 1, 2, 1, (0, 1, (), ()), id="promoted-ready-refills"),
    # ... but not while it takes its first requests: a refill's start would take their CPU
    pytest.param(["a:1:Ready:r900", "s:1:Ready:r0.2"], 1, 2, 1, (0, 0, (), ()), id="refill-waits-while-it-settles"),
    pytest.param(["a:1:Ready:r900", "s:1:Ready:r0.9"], 1, 2, 1, (0, 0, (), ()), id="settling-until-1s"),
    pytest.param(["a:1:Ready:r900", "s:1:Ready:r1"], 1, 2, 1, (0, 1, (), ()), id="settled-after-1s-refills"),
    # a replica on its way out, or a standby, does not hold the refill back
    pytest.param(["a:1:Ready:r900", "s:1:Standby:sb:r0.2"], 1, 1, 2, (0, 1, (), ()), id="a-standby-never-settles"),
    # 1 → 4 with two standbys: both promoted, one created cold (capacity does not wait)
    pytest.param(["a:1:Ready", "s:1:Standby:sb", "t:1:Standby:sb"], 1, 4, 2, (1, 0, ("s", "t"), ()),
                 id="scale-out-beyond-the-pool"),
    # a warmed standby goes before an older one still warming
    pytest.param(["a:1:Ready", "w:1:Warming:sb", "s:1:Standby:sb"], 1, 2, 2, (0, 0, ("s",), ()),
                 id="warmed-standby-first"),
    # standbys are no scale-in candidates: the routed replica goes, the pool stays
    pytest.param(["a:1:Ready", "b:1:Ready", "s:1:Standby:sb"], 1, 1, 1, (0, 0, (), ("b",)),
                 id="scale-in-keeps-the-pool"),
    pytest.param(["a:1:Ready", "s:1:Standby:sb", "t:1:Starting:sb"], 1, 1, 1, (0, 0, (), ("t",)),
                 id="smaller-pool-stops-the-least-warmed"),
    # an update stops old standbys at once and refills only when no old replica is left
    pytest.param(["a:1:Ready", "s:1:Standby:sb"], 2, 1, 1, (1, 0, (), ("s",)), id="update-stops-old-standbys"),
    pytest.param(["a:2:Ready"], 2, 1, 1, (0, 1, (), ()), id="update-done-refills-with-new-version"),
    # scale to zero keeps the pool: a scale from zero promotes
    pytest.param(["s:1:Standby:sb"], 1, 1, 1, (0, 0, ("s",), ()), id="scale-from-zero-promotes"),
    pytest.param(["a:1:Ready", "s:1:Standby:sb"], 1, 1, 0, (0, 0, (), ("s",)), id="pool-off-stops-standbys"),
]


@pytest.mark.parametrize("replicas,current,desired,standby,want", PLANS)
def test_plan_with_standbys(
    replicas: list[str], current: int, desired: int, standby: int, want: tuple[Any, ...]
) -> None:
    plan = plan_rollout(reps(*replicas), current_version=current, desired=desired, standby=standby, now=NOW)
    assert (plan.create, plan.create_standby, plan.promote, plan.stop) == want


def test_the_refill_settle_is_the_documented_1_s() -> None:
    # docs/cold-start.md, "What a promotion waits for"
    assert REFILL_SETTLE_S == 1.0
    # without `now` (no clock given) nothing settles: the plan is the one before any promotion
    plan = plan_rollout(reps("a:1:Ready:r900", "s:1:Ready:r0.2"), current_version=1, desired=2, standby=1)
    assert plan.create_standby == 1


@pytest.mark.parametrize(
    "old,new,ok",
    [
        pytest.param(P.WARMING, P.STANDBY, True, id="parked-after-warmup"),
        pytest.param(P.STANDBY, P.READY, True, id="promoted"),
        pytest.param(P.STANDBY, P.STOPPED, True, id="stopped-without-drain"),
        pytest.param(P.STANDBY, P.FAILED, True, id="crashed"),
        pytest.param(P.STARTING, P.STANDBY, False, id="not-before-warmup"),
        pytest.param(P.READY, P.STANDBY, False, id="no-demotion"),
        pytest.param(P.STANDBY, P.DRAINING, False, id="never-routed-so-no-drain"),
    ],
)
def test_standby_transitions(old: P, new: P, ok: bool) -> None:
    if ok:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(Exception, match="not allowed"):
            check_transition(old, new)


def test_standby_defaults_are_documented_ones() -> None:
    # docs/cold-start.md: no standby unless asked; frozen when asked without a mode; no hooks
    assert Standby() == Standby(replicas=0, mode="frozen", sleep_path=None, wake_path=None)
    assert spec().metadata.standby == Standby()


def test_standby_errors_name_each_field_at_once() -> None:
    doc = {"metadata": {"name": "a", "standby": {"replicas": 21, "mode": "warm", "wake_path": "wake"}},
           "containers": [{"command": "serve", "port": 8000}]}
    with pytest.raises(SpecError) as err:
        parse_spec(doc)
    text = str(err.value)
    for field in ("metadata.standby.replicas", "metadata.standby.mode", "metadata.standby.wake_path"):
        assert field in text


def with_standby(n: int, mode: str = "frozen", **kw: Any) -> ServiceSpec:
    s = spec(**kw)
    md = s.metadata.model_copy(update={"standby": Standby(replicas=n, mode=mode)})  # type: ignore[arg-type]
    return s.model_copy(update={"metadata": md})


def signals_of(world: World, rid: str) -> list[int]:
    return [sig for p in world.runtime.started if p.launch.replica_id == rid for _, sig in p.signals]


@pytest.mark.parametrize(
    "mode,parked,stopped",
    [
        pytest.param("frozen", [STOP], [STOP, CONT, TERM], id="frozen"),
        pytest.param("hot", [], [TERM], id="hot"),
    ],
)
async def test_supervisor_parks_a_standby_and_stops_it_without_drain(
    tmp_path: Path, mode: str, parked: list[int], stopped: list[int]
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(with_standby(1, mode))
    rid = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas", standby=True).id
    sup, task = world.supervise(rid)
    await world.clock.run_until(lambda: world.replica().phase == P.STANDBY)
    await world.clock.advance(5.0)
    row = world.replica()
    assert row.phase == P.STANDBY and signals_of(world, rid) == parked
    assert row.cold_start["total_s"] is not None  # its cold start ended when it was parked
    world.store.update_replica(rid, stopping=True)
    sup.request_stop()
    await world.clock.run_until(task.done)
    assert signals_of(world, rid) == stopped  # a frozen group gets SIGCONT before its SIGTERM
    assert P.DRAINING not in [c.phase for c in world.store.phases(rid)]


def with_initial_delay(s: ServiceSpec, seconds: float) -> ServiceSpec:
    main = s.containers[0]
    assert main.health_check is not None
    check = main.health_check.model_copy(update={"initial_delay_seconds": seconds})
    return s.model_copy(update={"containers": [main.model_copy(update={"health_check": check})]})


@pytest.mark.parametrize(
    "initial_delay_s",
    [
        pytest.param(0.0, id="no-initial-delay"),
        # the check's initial delay is a start's (the model loading), not a thaw's
        pytest.param(2.0, id="initial-delay-not-waited-on-promotion"),
    ],
)
async def test_reconciler_promotes_a_frozen_standby_on_scale_out_and_refills(
    tmp_path: Path, initial_delay_s: float
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(with_initial_delay(with_standby(1, replicas=1), initial_delay_s))
    running = world.reconciler()

    def settled() -> bool:
        rows = world.rows()
        return sorted((r.phase, bool(r.standby)) for r in rows) == [(P.READY, False)] * (
            len(rows) - 1
        ) + [(P.STANDBY, True)]

    await world.clock.run_until(lambda: len(world.rows()) == 2 and settled())
    standby = next(r.id for r in world.rows() if r.standby)
    started = len(world.runtime.started)
    world.store.update_service("svc", desired_replicas=2)
    t0 = world.clock.now()
    running.rec.wake()
    await world.clock.run_until(lambda: world.store.get_replica(standby).phase == P.READY)  # type: ignore[union-attr]
    promoted = world.clock.now() - t0
    # one probe after the thaw: well under a cold start (the fake's default ready_after_s)
    assert promoted < 0.5, promoted
    row = world.store.get_replica(standby)
    assert row is not None and row.cold_start["promotion_s"] <= promoted
    assert signals_of(world, standby) == [STOP, CONT]
    # resumed within the reconciler's pass that promoted it, not at the supervisor's next turn
    cont_at = [t for p in world.runtime.started if p.launch.replica_id == standby for t, sig in p.signals if sig == CONT]
    assert cont_at == [t0]
    await world.clock.run_until(lambda: len(world.rows()) == 3 and settled())
    assert len(world.runtime.started) == started + 1  # the pool refilled in the background
    await running.stop(world.clock, stop_replicas=True)


async def test_adoption_keeps_a_frozen_standby_parked(tmp_path: Path) -> None:
    world = World.make(tmp_path)
    world.store.create_service(with_standby(1, replicas=0))
    first = world.reconciler()
    await world.clock.run_until(lambda: [r.phase for r in world.rows()] == [P.STANDBY])
    rid, pid = world.rows()[0].id, world.rows()[0].pid
    await first.stop(world.clock, stop_replicas=False)  # the server dies, its replicas run on
    runtime = world.runtime.next_control_plane()
    second = world.reconciler(runtime)
    await world.clock.advance(2.0)
    row = world.store.get_replica(rid)
    assert row is not None and row.phase == P.STANDBY and row.pid == pid
    assert runtime.started == [] and "Adopted" in world.reasons()
    assert signals_of(world, rid) == [STOP, STOP]  # frozen again: SIGSTOP is idempotent
    world.store.update_service("svc", desired_replicas=1)
    second.rec.wake()
    await world.clock.run_until(lambda: world.store.get_replica(rid).phase == P.READY)  # type: ignore[union-attr]
    assert signals_of(world, rid)[-1] == CONT
    await second.stop(world.clock, stop_replicas=True)


def test_reconciler_wake_from_another_thread_runs_a_pass_at_once(tmp_path: Path) -> None:
    """The API writes desired state and wakes the reconciler from a worker thread: the pass runs
    at once, not at the next tick (60 s here). On a bare asyncio loop in a thread of its own, as
    the server's: an ``Event.set`` from another thread would not wake its selector at all."""
    passes: list[float] = []
    first = threading.Event()
    rec_box: list[Reconciler] = []

    async def serve() -> None:
        world = World.make(tmp_path)
        rec = Reconciler(world.store, world.runtime, replace(world.cfg, clock=LoopClock()), tick_s=60.0)
        second = asyncio.Event()

        def one_pass() -> None:
            passes.append(time.monotonic())
            first.set()
            if len(passes) == 2:
                second.set()

        rec.reconcile_once = one_pass  # type: ignore[method-assign]
        rec_box.append(rec)
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(second.wait(), timeout=5)
        stop.set()
        rec.wake()
        await task

    loop_thread = threading.Thread(target=lambda: asyncio.run(serve()))
    loop_thread.start()
    assert first.wait(10)
    woken = time.monotonic()
    rec_box[0].wake()
    loop_thread.join(10)
    assert len(passes) >= 2 and passes[1] - woken < 0.5  # measured: < 1 ms; before: never (5 s)
