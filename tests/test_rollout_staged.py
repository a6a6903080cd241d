"""The staged rollout: the pure decision (table), the window arithmetic, and the controller's
looks on a real SQLite store, fed the candidate's counters the way a gateway sends them (a real
counters datagram into a real GatewayStats) on the one fake clock (kernel.clock.FakeClock)
(steps, breach and rollback, pause/resume/abort, a restart of the controller, a silent gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from openeas.api.rollouts import rollout_view
from openeas.controller.rollout_loop import RolloutController
from openeas.controller.rollout_staged import decide, step_weights, validate_steps
from openeas.errors import Conflict
from openeas.kernel.clock import FakeClock
from openeas.kernel.rollout import Action, Observation, RolloutPlan, RolloutState, Status
from openeas.kernel.states import IllegalTransition
from openeas.spec import parse_spec
from openeas.spec.group import parse_group
from openeas.store import Store
from openeas.store.groups import GroupStore
from openeas.store.rollouts import RolloutStore
from openeas.telemetry.gateway_stats import GatewayStats, MemberSample, decode_all, encode
from openeas.telemetry.group_stats import DatagramGroupCounters, window
from openeas.telemetry.latency import GROUP_LATENCY_BUCKETS_S

T0 = 1_800_000_000.0
PLAN = RolloutPlan(
    group="g", candidate="new", baseline="old", steps=(5, 50, 100), hold_s=60, max_p99_ms=200, min_success=99.0,
    min_requests=20,
)  # fmt: skip


def at(step: int, started: float = T0, status: Status = Status.RUNNING) -> RolloutState:
    return RolloutState(status=status, step=step, step_started_at=started, rebase=False)


def obs(requests: int, success: float | None = 1.0, p99_ms: float | None = 50.0) -> Observation:
    return Observation(requests=requests, success=success, p99_ms=p99_ms)


@pytest.mark.parametrize(
    ("state", "observation", "now", "action", "step", "reason"),
    [
        (RolloutState(), None, T0, Action.START_STEP, 0, "step 1/3: 5% to new"),
        (at(0), obs(100), T0 + 30, Action.HOLD, 0, "held 30/60 s, 100 requests"),
        (at(0), obs(100), T0 + 60, Action.START_STEP, 1, "next 50%"),  # held 60 s healthy: next step
        (at(2), obs(100), T0 + 61, Action.SUCCEED, 2, "step 3/3 (100% to new) held 61 s healthy"),
        # 97 of 100 answered below 500: 97% < 99% — at once, 10 s into a 60 s hold.
        (at(1), obs(100, success=0.97), T0 + 10, Action.ROLL_BACK, 1, "success 97.00% < 99% over 100 requests"),
        (at(1), obs(100, p99_ms=350.0), T0 + 10, Action.ROLL_BACK, 1, "p99 350.0 ms > 200 ms"),
        # 19 answers, all failed: fewer than min_requests (20), not judged yet.
        (at(1), obs(19, success=0.0), T0 + 10, Action.HOLD, 1, "held 10/60 s, 19 requests"),
        (at(1), obs(5), T0 + 90, Action.HOLD, 1, "hold over but 5 of 20 requests (min_requests) seen"),
        (at(1), None, T0 + 90, Action.HOLD, 1, "0 of 20 requests"),  # no data is not healthy
        (at(1, status=Status.PAUSED), obs(100, success=0.0), T0 + 90, Action.NONE, 1, "rollout is Paused"),
        (at(2, status=Status.SUCCEEDED), None, T0, Action.NONE, 2, "rollout is Succeeded"),
    ],
    ids=["start", "holding", "next-step", "succeed", "success-breach", "p99-breach", "too-few-to-judge", "waiting-for-data", "no-data", "paused", "done"],
)
def test_decide(state: RolloutState, observation: Observation | None, now: float, action: Action, step: int, reason: str) -> None:
    d = decide(PLAN, state, observation, now)
    assert (d.action, d.step) == (action, step)
    assert reason in d.reason, d.reason


@pytest.mark.parametrize(
    ("steps", "error"),
    [([5, 25, 50, 100], None), ([], "at least one step"), ([0, 50], "steps[0]: must be a percentage 1..100, got 0"), ([50, 25], "steps: must increase, got 50,25"), ([50, 50], "must increase")],
    ids=["ok", "empty", "zero", "down", "flat"],
)
def test_validate_steps(steps: list[int], error: str | None) -> None:
    errors = validate_steps(steps)
    assert (error is None and not errors) or any(error in e for e in errors if error), errors


def test_step_weights() -> None:
    assert step_weights(5) == (50, 950)
    assert step_weights(100) == (1000, 0)


def _buckets(n: int, at_s: float) -> list[int]:
    out = [0] * len(GROUP_LATENCY_BUCKETS_S)
    out[next(i for i, b in enumerate(GROUP_LATENCY_BUCKETS_S) if at_s <= b)] = n
    return out


def test_window_counts_what_was_added_since_the_step_started() -> None:
    since_codes, since_b = {"200": 1000, "500": 10}, _buckets(1010, 0.01)
    now_codes, now_b = {"200": 1090, "500": 20}, [a + b for a, b in zip(_buckets(1010, 0.01), _buckets(100, 0.5), strict=True)]
    o = window(now_codes, now_b, since_codes, since_b)
    # 100 answers in the window: 90 ok, 10 failed; all of them in (0.3, 0.5] s.
    assert o.requests == 100 and o.success == pytest.approx(0.9)
    assert o.p99_ms is not None and 300 < o.p99_ms <= 500
    reset = window({"200": 5}, _buckets(5, 0.01), since_codes, since_b)  # the gateway restarted
    assert reset.requests == 5 and reset.success == 1.0


# --- the controller's looks, on a real store with a fake gateway ------------------------------------------


class FakeGateway:
    """A gateway's cumulative live counters of the candidate; each look first receives them as the
    gateway sends them (its datagram, encoded and decoded, into the control plane's GatewayStats)
    and reads them back through `DatagramGroupCounters`, what the server wires. A gateway that is
    not ``up`` sends nothing (after 3 s it is gone: nothing is known)."""

    def __init__(self, clock: FakeClock) -> None:
        self.codes: dict[str, int] = {}
        self.buckets = [0] * len(GROUP_LATENCY_BUCKETS_S)
        self.up = True
        self.clock = clock
        self.stats = GatewayStats(clock.now)
        self.counters = DatagramGroupCounters(self.stats)

    def serve(self, ok: int, failed: int = 0, seconds: float = 0.01) -> None:
        self.codes["200"] = self.codes.get("200", 0) + ok
        if failed:
            self.codes["500"] = self.codes.get("500", 0) + failed
        self.buckets = [a + b for a, b in zip(self.buckets, _buckets(ok + failed, seconds), strict=True)]

    def send(self) -> None:
        groups = {"g": {"new": MemberSample(dict(self.codes), tuple(self.buckets)), "old": MemberSample({}, ())}}
        for data in encode("gw-1", 60.0, {}, groups=groups):
            d = decode_all(data)
            self.stats.observe(d.gateway_id, d.samples, self.clock.now(), uptime_s=d.uptime_s, groups=d.groups)

    def members(self, group: str) -> Mapping[str, MemberSample] | None:
        if self.up:
            self.send()
        return self.counters.members(group)


@pytest.fixture
def rig(tmp_path: Path) -> tuple[Store, FakeGateway, FakeClock]:
    store = Store(tmp_path)
    for name in ("old", "new"):
        store.create_service(parse_spec({"metadata": {"name": name}, "containers": [{"command": "x"}]}))
    GroupStore(store).create(parse_group({"name": "g", "routes": [{"service": "old", "weight": 1000}, {"service": "new", "mirror_weight": 5}]}))
    clock = FakeClock(start=T0 - FakeClock.WALL_OFFSET)  # wall() == T0
    return store, FakeGateway(clock), clock


def start(store: Store) -> None:
    groups = GroupStore(store)
    restore = tuple({"service": m.service, "weight": m.weight, "mirror_weight": m.mirror_weight} for m in groups.get("g").members)
    RolloutStore(store).create(RolloutPlan(**{**PLAN.to_dict(), "steps": PLAN.steps, "restore": restore}))


def look(store: Store, gw: FakeGateway, clock: FakeClock, controller: RolloutController | None = None) -> Action:
    c = controller or RolloutController(store, gw, clock=clock)
    active = RolloutStore(store).active()
    if not active or active[0][1].status != Status.RUNNING:
        return Action.NONE
    plan, state = active[0]
    return c.look(plan, state, gw.members("g")).action


def weights(store: Store) -> dict[str, tuple[int, int]]:
    return {m.service: (m.weight, m.mirror_weight) for m in GroupStore(store).get("g").members}


def test_a_healthy_candidate_goes_through_every_step_to_100(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    start(store)
    assert look(store, gw, clock) == Action.START_STEP
    assert weights(store) == {"old": (950, 0), "new": (50, 0)}  # 5%, and its mirror weight ended
    for pct in (50, 100):
        gw.serve(100)
        clock.jump(30)
        assert look(store, gw, clock) == Action.HOLD
        clock.jump(31)
        # A new controller each time: the state is in the store (a restart loses nothing).
        assert look(store, gw, clock) == Action.START_STEP
        assert weights(store)["new"] == (pct * 10, 0)
    gw.serve(100)
    clock.jump(61)
    assert look(store, gw, clock) == Action.SUCCEED
    assert RolloutStore(store).get("g")[1].status == Status.SUCCEEDED
    assert weights(store) == {"old": (0, 0), "new": (1000, 0)}
    reasons = [e.reason for e in store.events("g")]
    assert reasons.count("RolloutStep") == 3 and reasons[-1] == "RolloutSucceeded"


def test_a_breach_rolls_back_to_the_routes_of_before(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    start(store)
    look(store, gw, clock)
    gw.serve(100)
    clock.jump(61)
    look(store, gw, clock)  # step 2: 50%
    gw.serve(80, failed=20)  # 80% success < 99%
    clock.jump(5)
    assert look(store, gw, clock) == Action.ROLL_BACK
    _, state = RolloutStore(store).get("g")
    assert state.status == Status.ROLLED_BACK and "success 80.00% < 99%" in state.reason
    assert weights(store) == {"old": (1000, 0), "new": (0, 5)}  # as before the rollout, mirror included
    failed = [e for e in store.events("g") if e.reason == "RolloutFailed"]
    assert failed and failed[0].type == "Warning"


def test_a_rollback_says_routes_restored_only_after_the_gateways_acknowledged_them(
    rig: tuple[Store, FakeGateway, FakeClock],
) -> None:
    """RolledBack is written first; the API's routes_restored turns true only after the routes are
    back in the store and the gateways' wait returned for that routing version."""
    store, gw, clock = rig
    seen: list[tuple[int, dict[str, tuple[int, int]], bool]] = []

    def await_routing(version: int) -> None:  # the fleet's wait_applied
        seen.append((version, weights(store), RolloutStore(store).get("g")[1].restore_pending))

    controller = RolloutController(store, gw, clock=clock, await_routing=await_routing)
    start(store)
    look(store, gw, clock, controller)
    gw.serve(80, failed=20)
    clock.jump(5)
    assert look(store, gw, clock, controller) == Action.ROLL_BACK
    assert seen == [(store.routing_version(), {"old": (1000, 0), "new": (0, 5)}, True)]
    plan, state = RolloutStore(store).get("g")
    assert not state.restore_pending
    assert rollout_view(plan, state, controller)["state"]["routes_restored"] is True
    pending = rollout_view(plan, state.but(restore_pending=True), controller)["state"]
    assert pending["status"] == "RolledBack" and pending["routes_restored"] is False


def test_failures_before_the_step_do_not_count_against_it(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    gw.serve(0, failed=500)  # the candidate failed a lot before (say, as a mirror target)
    start(store)
    look(store, gw, clock)
    gw.serve(100)
    clock.jump(61)
    assert look(store, gw, clock) == Action.START_STEP  # only the 100 answers of the step were judged


def test_pause_resume_and_abort(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    rollouts = RolloutStore(store)
    start(store)
    look(store, gw, clock)
    rollouts.command("g", "pause", now=clock.wall())
    gw.serve(0, failed=100)
    clock.jump(100)
    assert look(store, gw, clock) == Action.NONE  # paused: nothing judged, the weights stay
    assert weights(store)["new"] == (50, 0)
    rollouts.command("g", "resume", now=clock.wall())  # the step's hold starts again, with a new window
    gw.serve(100)
    clock.jump(30)
    assert look(store, gw, clock) == Action.HOLD
    assert RolloutStore(store).get("g")[1].step_started_at == T0 + 100
    rollouts.command("g", "abort", now=clock.wall())  # what the API does: it writes the abort only
    assert weights(store)["new"] == (50, 0)  # ...the routes are the controller's to restore
    with pytest.raises(Conflict, match="still being restored"):
        start(store)  # a new rollout would snapshot the step's weights as the routes to restore
    converge(store, gw, clock)
    assert weights(store) == {"old": (1000, 0), "new": (0, 5)}
    assert rollouts.active() == [] and rollouts.restoring() == []


def converge(store: Store, gw: FakeGateway, clock: FakeClock) -> None:
    """One tick of the controller: restores pending, then looks at the running rollouts."""
    asyncio.run(RolloutController(store, gw, clock=clock).tick())


def test_a_rollback_written_before_a_crash_is_restored_by_the_next_controller(
    rig: tuple[Store, FakeGateway, FakeClock],
) -> None:
    store, gw, clock = rig
    start(store)
    look(store, gw, clock)
    _, state = RolloutStore(store).active()[0]
    # The rolled-back state was written, then the control plane died before restoring the routes.
    crashed = state.but(status=Status.ROLLED_BACK, reason="p99 breach", finished_at=clock.wall(), restore_pending=True)
    assert RolloutStore(store).save("g", crashed, expect=state)
    assert weights(store)["new"] == (50, 0)
    converge(store, gw, clock)  # a new controller after the restart
    assert weights(store) == {"old": (1000, 0), "new": (0, 5)}
    assert RolloutStore(store).get("g")[1] == crashed.but(restore_pending=False)


def test_an_unreachable_gateway_holds_the_step(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    start(store)
    look(store, gw, clock)
    gw.up = False
    clock.jump(600)
    assert look(store, gw, clock) == Action.HOLD  # no data: neither next step nor rollback
    assert weights(store)["new"] == (50, 0)


def test_an_operator_command_between_read_and_write_wins(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    start(store)
    look(store, gw, clock)
    plan, state = RolloutStore(store).active()[0]  # the controller read this...
    RolloutStore(store).command("g", "pause")  # ...then the operator paused...
    gw.serve(100)
    clock.jump(61)
    RolloutController(store, gw, clock=clock).look(plan, state, gw.members("g"))  # ...its write is refused
    assert RolloutStore(store).get("g")[1].status == Status.PAUSED


def test_the_store_refuses_a_status_change_outside_the_table(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, _, _ = rig
    start(store)
    rollouts = RolloutStore(store)
    _, state = rollouts.command("g", "abort")
    with pytest.raises(IllegalTransition, match="rollout status Aborted → Running"):
        rollouts.save("g", state.but(status=Status.RUNNING), expect=state)
    assert rollouts.get("g")[1].status == Status.ABORTED


async def test_the_loop_runs_a_rollout_to_the_end_on_virtual_time(rig: tuple[Store, FakeGateway, FakeClock]) -> None:
    store, gw, clock = rig
    start(store)
    stop = asyncio.Event()
    controller = RolloutController(store, gw, clock=clock, tick_s=5.0)
    task = asyncio.create_task(controller.run(stop))
    done = lambda: RolloutStore(store).get("g")[1].status == Status.SUCCEEDED  # noqa: E731
    await clock.run_until(done, each=lambda: gw.serve(10), limit_s=600)
    # Three steps of 60 s each, looked at every 5 s: about three minutes of life, in milliseconds.
    assert 180 <= clock.wall() - T0 <= 200
    assert weights(store) == {"old": (0, 0), "new": (1000, 0)}
    stop.set()
    controller.wake()
    await asyncio.wait_for(task, 5)
