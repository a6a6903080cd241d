"""One replica's life under its ReplicaSupervisor, on the fake clock and the fake runtime: failures
and their backoff, readiness, drain and stop, adoption. No processes, no sockets, no waiting;
the store is the real one (SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openeas.controller.replica import (
    DRAIN_POLL_S,
    STABLE_AFTER_S,
    GatewayView,
    GatewayViewFn,
    ReplicaSupervisor,
)
from openeas.controller.rollout import restart_backoff_s
from openeas.kernel.states import ReplicaPhase
from openeas.runtime import ProcessRef
from openeas.runtime.fake import Behaviour, FakeRuntime
from tests.fakes import DRAIN_S, World, spec

P = ReplicaPhase
TERM, KILL = signal.SIGTERM, signal.SIGKILL


def new_replica(world: World, **spec_kw: Any) -> str:
    world.store.create_service(spec(**spec_kw))
    return world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id


async def request_stop(world: World, sup: ReplicaSupervisor, task: asyncio.Task[None]) -> None:
    """What the reconciler does to stop a replica: mark the row, wake the supervisor."""
    world.store.update_replica(sup.rid, stopping=True)
    sup.stop_requested.set()
    await world.clock.run_until(task.done)


def phase_of(world: World, rid: str) -> str | None:
    row = world.store.get_replica(rid)
    return None if row is None else row.phase


# The first four restarts after a failure that repeats on every start.
FAILURES = [
    pytest.param(Behaviour(exit_after_s=5.0), {}, "Crashed", "exited (code 1)", [1, 2, 4, 8], id="crash-while-ready"),
    pytest.param(Behaviour(ready_after_s=None, exit_after_s=0.5, exit_code=3), {}, "StartFailed",
                 "process exited during startup (code 3)", [1, 2, 4, 8], id="exit-during-start"),
    pytest.param(Behaviour(ready_after_s=None), {"startup_timeout_s": 3.0}, "StartupTimeout",
                 "not ready within the startup deadline of 3 s (health_check.startup_timeout_seconds; raise it if the model needs longer): fake: not ready", [1, 2, 4, 8], id="never-ready-times-out"),
    pytest.param(Behaviour(ready_after_s=20.0), {"startup_timeout_s": 10.0}, "StartupTimeout",
                 "not ready within the startup deadline of 10 s", [1, 2, 4, 8], id="slow-to-get-ready-times-out"),
    pytest.param(Behaviour(start_error="exec: serve: not found"), {}, "StartFailed",
                 "cannot start the replica process: exec: serve: not found", [1, 2, 4, 8], id="cannot-start"),
    pytest.param(Behaviour(unhealthy_after_s=5.0), {}, "Unhealthy", "health_check failed 3 times",
                 [1, 2, 4, 8], id="unhealthy-while-ready"),
    pytest.param(Behaviour(exit_after_s=STABLE_AFTER_S + 1), {}, "Crashed", "exited (code 1)", [1, 1, 1],
                 id="crash-after-a-stable-run-resets-the-backoff"),
]


@pytest.mark.parametrize(("behaviour", "spec_kw", "reason", "message", "backoffs"), FAILURES)
async def test_failure_waits_out_its_backoff_in_failed_then_restarts_from_pending(
    tmp_path: Path, behaviour: Behaviour, spec_kw: dict[str, float], reason: str, message: str,
    backoffs: list[float],
) -> None:
    world = World.make(tmp_path, behaviour)
    rid = new_replica(world, **spec_kw)
    sup, task = world.supervise(rid)

    def starts() -> int:
        return sum(c.phase == P.FETCHING for c in world.store.phases(rid))

    await world.clock.run_until(lambda: starts() > len(backoffs))
    phases = world.store.phases(rid)
    # (A start that cannot even exec fails at the instant it begins: its fifth failure is here too.)
    failed = [i for i, c in enumerate(phases) if c.phase == P.FAILED][: len(backoffs)]
    assert len(failed) == len(backoffs)
    waited = []
    for n, i in enumerate(failed, start=1):
        entered, restart, fetch = phases[i], phases[i + 1], phases[i + 2]
        assert message in (entered.message or "")
        # Failed all through the backoff (restart_count already counts this restart) ...
        during = world.store.between(entered, restart)
        assert {c.phase for c in during} == {P.FAILED}
        assert during[-1].restart_count == n and f"(restart {n})" in (during[-1].message or "")
        # ... then Pending when the restart begins, and the start follows at once.
        assert (restart.phase, restart.restart_count, fetch.phase) == (P.PENDING, n, P.FETCHING)
        assert fetch.t == restart.t
        waited.append(restart.t - entered.t)
    assert waited == pytest.approx(backoffs)
    if backoffs[1] != 1:
        assert backoffs == [restart_backoff_s(n) for n in range(1, len(backoffs) + 1)]
    assert world.reasons().count(reason) >= len(backoffs)
    assert world.reasons().count("Restarting") >= len(backoffs)
    # Each failed process was stopped before its successor started: at most one runs.
    assert len(world.runtime.live()) <= 1
    await request_stop(world, sup, task)
    assert world.runtime.live() == [] and world.runtime.children == {}


@pytest.mark.parametrize("threshold", [1, 3, 5], ids=lambda n: f"threshold-{n}")
async def test_ready_replica_is_unhealthy_after_failure_threshold_failed_probes(
    tmp_path: Path, threshold: int
) -> None:
    world = World.make(tmp_path, Behaviour(unhealthy_after_s=10.0))
    rid = new_replica(world, failure_threshold=threshold, period_s=1.0)
    sup, task = world.supervise(rid)
    await world.clock.run_until(lambda: phase_of(world, rid) == P.FAILED)
    phases = world.store.phases(rid)
    assert [c.phase for c in phases][-3:] == [P.WARMING, P.READY, P.FAILED]
    ready_at, failed_at = phases[-2].t, phases[-1].t
    proc = world.runtime.started[0]
    failures = [t for t, _port, ok in world.runtime.probes if not ok]
    assert all(ready_at < t <= failed_at for t in failures)
    assert len(failures) == threshold
    # One probe per period: the first failing one within a period of the hang, then one a period.
    assert 0 <= failures[0] - (proc.started_at + 10.0) <= 1.0
    assert failed_at == pytest.approx(failures[0] + (threshold - 1) * 1.0)
    assert f"health_check failed {threshold} times" in (phases[-1].message or "")
    await request_stop(world, sup, task)
    assert [s for _, s in proc.signals] == [TERM]  # stopped before the restart, not after


STOPS = [
    # behaviour of the process, grace period (s), whether it was Ready, signals it gets, outcome
    pytest.param(Behaviour(term_exit_s=0.5), 5.0, True, [TERM], "terminated", id="exits-on-sigterm"),
    pytest.param(Behaviour(term_exit_s=4.0), 5.0, True, [TERM], "terminated", id="slow-exit-within-grace"),
    pytest.param(Behaviour(term_exit_s=None), 5.0, True, [TERM, KILL], "killed", id="ignores-sigterm"),
    pytest.param(Behaviour(term_exit_s=None), 0.0, True, [TERM, KILL], "killed", id="ignores-sigterm-no-grace"),
    pytest.param(Behaviour(ready_after_s=None, term_exit_s=None), 2.0, False, [TERM, KILL], "killed",
                 id="stopped-while-starting-no-drain"),
]


@pytest.mark.parametrize(("behaviour", "grace_s", "ready", "signals", "how"), STOPS)
async def test_stop_drains_then_sigterm_then_sigkill_after_the_grace_period(
    tmp_path: Path, behaviour: Behaviour, grace_s: float, ready: bool, signals: list[int], how: str
) -> None:
    world = World.make(tmp_path, behaviour)
    rid = new_replica(world, grace_s=grace_s)
    sup, task = world.supervise(rid)
    serving = P.READY if ready else P.STARTING
    later = world.clock.now() + 3.0  # it has been serving (or starting) for a while
    await world.clock.run_until(lambda: phase_of(world, rid) == serving and world.clock.now() >= later)
    asked = world.clock.now()
    await request_stop(world, sup, task)

    proc = world.runtime.started[0]
    phases = world.store.phases(rid)
    ends = [P.READY, P.DRAINING, P.STOPPED] if ready else [P.STARTING, P.STOPPED]
    assert [c.phase for c in phases][-len(ends):] == ends
    term_at = asked + (DRAIN_S if ready else 0.0)  # out of the routing table for drain_s first
    if ready:
        assert phases[-2].t == asked
    assert [s for _, s in proc.signals] == signals
    assert proc.signals[0][0] == pytest.approx(term_at)
    if KILL in signals:  # never before the grace period is over, and promptly after it
        assert grace_s <= proc.signals[1][0] - term_at <= grace_s + 0.06
    assert not proc.running(world.clock.now())
    assert world.store.get_replica(rid) is None  # the row is gone once Stopped
    assert world.runtime.children == {}
    assert any(e.reason == "Stopped" and e.message.endswith(how) for e in world.store.events("svc"))


ADOPTIONS = [
    # phase recorded, process alive, pid recorded, new starts, restart_count, event, phases after
    pytest.param(P.READY, True, True, 0, 0, "Adopted", [], id="live-ready-keeps-serving"),
    pytest.param(P.STARTING, True, True, 0, 0, "Adopted", [P.STARTING, P.WARMING, P.READY],
                 id="live-starting-probed-again"),
    pytest.param(P.WARMING, True, True, 0, 0, "Adopted", [P.STARTING, P.WARMING, P.READY],
                 id="live-warming-probed-again"),
    pytest.param(P.READY, False, True, 1, 1, "Lost", [P.PENDING, P.FETCHING, P.STARTING, P.WARMING, P.READY],
                 id="dead-ready-restarts"),
    pytest.param(P.FETCHING, True, False, 1, 0, None, [P.PENDING, P.FETCHING, P.STARTING, P.WARMING, P.READY],
                 id="no-pid-recorded-starts-afresh"),
]


@pytest.mark.parametrize(("phase", "alive", "record_pid", "starts", "restarts", "event", "after"), ADOPTIONS)
async def test_adoption_after_a_control_plane_restart(
    tmp_path: Path, phase: ReplicaPhase, alive: bool, record_pid: bool, starts: int, restarts: int,
    event: str | None, after: list[ReplicaPhase],
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(spec())
    rid, old = world.seed("svc", phase, record_pid=record_pid)
    if not alive:
        world.runtime.crash(rid, code=-9)
    seen = len(world.store.changes)
    runtime = world.runtime.next_control_plane()  # same host, a new control plane
    sup, task = world.supervise(rid, runtime)
    until = world.clock.now() + 10.0
    await world.clock.run_until(lambda: world.clock.now() >= until and phase_of(world, rid) == P.READY)

    row = world.replica()
    assert len(runtime.started) == starts
    assert row.restart_count == restarts
    assert (row.pid == old.pid) is (starts == 0)
    changed = [c.phase for c in world.store.changes[seen:]]
    assert [p for i, p in enumerate(changed) if i == 0 or changed[i - 1] != p] == after
    if event is not None:
        assert event in world.reasons()
    assert old.signals == []  # adopting never signals; a dead one has nothing to signal
    await request_stop(world, sup, task)


async def test_warmup_goes_through_the_injected_sender(tmp_path: Path) -> None:
    warm = tmp_path / "warmup.jsonl"
    warm.write_text('{"path": "/v1/completions", "body": {"prompt": "hi"}, "count": 3}\n')
    world = World.make(tmp_path)
    world.store.create_service(spec().model_copy(update={"warm_up_data_path": str(warm)}))
    rid = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id
    sup, task = world.supervise(rid)
    await world.clock.run_until(lambda: phase_of(world, rid) == P.READY)
    warmed = [e for e in world.store.events("svc") if e.reason == "Warmed"]
    assert [e.message for e in warmed] == ["warmup sent 3 requests, 0 failed"]
    await request_stop(world, sup, task)


def gateway(routed_for: float = 0.0, busy_for: float = 0.0, reachable: bool = True, error: bool = False):  # type: ignore[no-untyped-def]
    """A fake gateway as the supervisor asks it: it keeps routing to the replica for `routed_for`
    seconds after the drain began, and has 3 requests in flight on it for `busy_for` seconds."""

    def make(world: World, rid: str) -> tuple[GatewayViewFn, list[float]]:
        began: list[float] = []

        async def view(asked: str) -> GatewayView | None:
            assert asked == rid
            now = world.clock.now()
            if not began:
                began.append(now)
            if error:
                raise ConnectionResetError("gateway hung up")
            if not reachable:
                return None
            t = now - began[0]
            return GatewayView(routed=t < routed_for, in_flight=3 if t < busy_for else 0)

        return view, began

    return make


DRAINS = [
    # the gateway, grace period (s), SIGTERM this long after the stop request (s), drain timeout event
    pytest.param(gateway(), 30.0, 0.0, False, id="nothing-in-flight-sigterm-at-once"),
    pytest.param(gateway(routed_for=0.35), 30.0, 0.35, False, id="waits-until-the-gateway-stops-routing"),
    pytest.param(gateway(routed_for=0.2, busy_for=2.5), 30.0, 2.5, False, id="in-flight-drains-before-sigterm"),
    pytest.param(gateway(busy_for=3600.0), 5.0, 5.0, True, id="in-flight-beyond-the-grace-period"),
    pytest.param(gateway(busy_for=3600.0), 0.0, 0.0, True, id="in-flight-no-grace-period"),
    pytest.param(gateway(reachable=False), 30.0, DRAIN_S, False, id="gateway-unreachable-fixed-drain"),
    pytest.param(gateway(error=True), 30.0, DRAIN_S, False, id="gateway-error-fixed-drain"),
]


@pytest.mark.parametrize(("make_gateway", "grace_s", "term_after", "timeout"), DRAINS)
async def test_drain_waits_for_the_gateways_in_flight_requests_then_sigterm(
    tmp_path: Path, make_gateway: Any, grace_s: float, term_after: float, timeout: bool
) -> None:
    world = World.make(tmp_path, Behaviour(term_exit_s=0.5))
    rid = new_replica(world, grace_s=grace_s)
    world.cfg.gateway_view, began = make_gateway(world, rid)
    sup, task = world.supervise(rid)
    later = world.clock.now() + 3.0
    await world.clock.run_until(lambda: phase_of(world, rid) == P.READY and world.clock.now() >= later)
    asked = world.clock.now()
    await request_stop(world, sup, task)

    proc = world.runtime.started[0]
    phases = world.store.phases(rid)
    assert [c.phase for c in phases][-3:] == [P.READY, P.DRAINING, P.STOPPED]
    assert phases[-2].t == asked and began == [asked]  # Draining first, then the gateway is asked
    assert proc.signals[0][1] == TERM  # (then SIGKILL only with no grace period left to exit in)
    # SIGTERM once the gateway is done with the replica: not before, and within one poll after.
    assert term_after - 1e-6 <= proc.signals[0][0] - asked <= term_after + DRAIN_POLL_S + 1e-6
    assert ("DrainTimeout" in world.reasons()) is timeout
    assert world.store.get_replica(rid) is None


class AskedRuntime(FakeRuntime):
    """The fake runtime, counting how often a supervisor asks whether a process lives, with the
    period it may be asked at (the Ray runtime's ``alive_check_s``: a round trip each time)."""

    def __init__(self, world: World, alive_check_s: float) -> None:
        super().__init__(world.clock)
        self.alive_check_s = alive_check_s
        self.asked = 0

    def alive(self, ref: ProcessRef) -> bool:
        self.asked += 1
        return super().alive(ref)


@pytest.mark.parametrize(
    ("every", "asks"),
    [
        pytest.param(0.0, (90, 110), id="a-proc-read-asked-every-0.1s-pass"),
        pytest.param(1.0, (9, 11), id="a-round-trip-asked-once-a-second"),
    ],
)
async def test_whether_a_ready_replica_lives_is_asked_at_the_runtimes_period_and_a_death_seen_within_it(
    tmp_path: Path, every: float, asks: tuple[int, int]
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(spec())
    rid = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id
    runtime = AskedRuntime(world, every)
    world.cfg = replace(world.cfg, probe=runtime.probe, warmup=runtime.warmup)
    sup, task = world.supervise(rid, runtime)
    await world.clock.run_until(lambda: phase_of(world, rid) == P.READY)
    runtime.asked = 0
    until = world.clock.now() + 10.0
    await world.clock.run_until(lambda: world.clock.now() >= until)
    assert asks[0] <= runtime.asked <= asks[1]  # over 10 s, Ready
    runtime.crash(rid, code=-9)
    died = world.clock.now()
    await world.clock.run_until(lambda: phase_of(world, rid) != P.READY, limit_s=5)
    assert world.clock.now() - died <= max(every, 0.1) + 0.05  # seen at its next ask
    await request_stop(world, sup, task)


async def test_an_adopted_replica_knows_the_node_it_runs_on(tmp_path: Path) -> None:
    """After a takeover the adopted process's ref names its node, as a start's does: the Ray
    runtime steers a lost replica's restart away from it (runtime/ray_runtime.py)."""
    world = World.make(tmp_path)
    world.store.create_service(spec())
    rid, _old = world.seed("svc", P.READY, record_pid=True)
    world.store.update_replica(rid, node="node-7")
    sup, task = world.supervise(rid, world.runtime.next_control_plane())
    await world.clock.run_until(lambda: sup.ref is not None and phase_of(world, rid) == P.READY)
    assert sup.ref is not None and sup.ref.extra.get("node") == "node-7"
    await request_stop(world, sup, task)
