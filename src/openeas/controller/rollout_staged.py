"""The staged rollout's decision, a pure function: given the plan (candidate, baseline, steps,
hold, SLO), where the rollout stands (step, when it started) and what the candidate did since
(requests, success ratio, p99), at ``now``: the next action and why.

Rules:

- a running rollout that has not started its first step starts it (the weights go to
  ``steps[0]``% for the candidate);
- during a step, once the candidate answered at least ``min_requests`` live requests, a success
  ratio under ``min_success`` or a p99 over ``max_p99_ms`` rolls back at once (the baseline gets
  all the traffic again), whatever is left of the hold;
- a step whose hold (seconds, compared as timestamps) is over with enough data and no breach
  moves on to the next step, or, after the last one, succeeds;
- a hold that is over without ``min_requests`` answers waits: "no data" is not "healthy".

The loop that reads the gateway, writes the weights and keeps the state in the store is
`openeas.controller.rollout_loop`; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from itertools import pairwise
from typing import Any

DEFAULT_MIN_REQUESTS = 20  # candidate answers a step needs before it is judged


class Status(StrEnum):
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


ACTIVE = (Status.RUNNING, Status.PAUSED)


class Action(StrEnum):
    START_STEP = "start_step"  # set the weights of `Decision.step`
    HOLD = "hold"  # nothing to change yet
    ROLL_BACK = "roll_back"  # the SLO was breached: all traffic back to the baseline
    SUCCEED = "succeed"  # the last step held healthy
    NONE = "none"  # not running (paused or finished)


@dataclass(frozen=True)
class RolloutPlan:
    group: str
    candidate: str
    baseline: str
    steps: tuple[int, ...]  # percent of the two members' traffic to the candidate, increasing
    hold_s: float  # seconds each step is held and checked
    max_p99_ms: float | None = None  # the candidate's p99 over a step must stay at or under this
    min_success: float | None = None  # percent (99.5): answers below 500 over all answers
    min_requests: int = DEFAULT_MIN_REQUESTS
    # The group's routes when the rollout started: what a rollback or an abort restores.
    restore: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = list(self.steps)
        out["restore"] = list(self.restore)
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RolloutPlan:
        return RolloutPlan(**{**d, "steps": tuple(d["steps"]), "restore": tuple(d.get("restore", ()))})


@dataclass(frozen=True)
class RolloutState:
    status: Status = Status.RUNNING
    step: int = -1  # index into plan.steps; -1: no step started yet
    step_started_at: float | None = None  # epoch seconds the current step's weights were set
    reason: str = "starting"
    # The candidate's cumulative live counters on the gateway when the step started (by status
    # code, histogram buckets): the step's window is what was added since.
    baseline_codes: dict[str, int] = field(default_factory=dict)
    baseline_buckets: list[int] | None = None
    rebase: bool = True  # take a new window start at the next look (a step or a resume began)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RolloutState:
        return RolloutState(**{**d, "status": Status(d["status"])})

    def but(self, **changes: Any) -> RolloutState:
        return replace(self, **changes)


@dataclass(frozen=True)
class Observation:
    """The candidate's live traffic over the current step (from its window start)."""

    requests: int  # answers
    success: float | None  # ratio 0..1 of answers below 500; None without answers
    p99_ms: float | None  # None without answers


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    step: int  # the step the action is about


def step_weights(percent: int) -> tuple[int, int]:
    """(candidate, baseline) weights out of 1000 for ``percent``% to the candidate."""
    return percent * 10, 1000 - percent * 10


def validate_steps(steps: Sequence[int]) -> list[str]:
    errors = []
    if not steps:
        errors.append("steps: give at least one step (percent to the candidate), e.g. 5,25,50,100")
    for i, p in enumerate(steps):
        if not 1 <= p <= 100:
            errors.append(f"steps[{i}]: must be a percentage 1..100, got {p}")
    if any(b <= a for a, b in pairwise(steps)):
        errors.append(f"steps: must increase, got {','.join(map(str, steps))}")
    return errors


def decide(plan: RolloutPlan, state: RolloutState, obs: Observation | None, now: float) -> Decision:
    """The next action of a rollout at ``now`` (epoch seconds)."""
    n = len(plan.steps)
    if state.status != Status.RUNNING:
        return Decision(Action.NONE, f"rollout is {state.status.value}", state.step)
    if state.step < 0 or state.step_started_at is None:
        return Decision(Action.START_STEP, f"step 1/{n}: {plan.steps[0]}% to {plan.candidate}", 0)
    k, pct = state.step, plan.steps[state.step]
    where = f"step {k + 1}/{n} ({pct}% to {plan.candidate})"
    if obs is not None and obs.requests >= plan.min_requests:
        if plan.min_success is not None and obs.success is not None and 100 * obs.success < plan.min_success:
            return Decision(
                Action.ROLL_BACK,
                f"{where}: success {100 * obs.success:.2f}% < {plan.min_success:g}% over "
                f"{obs.requests} requests",
                k,
            )
        if plan.max_p99_ms is not None and obs.p99_ms is not None and obs.p99_ms > plan.max_p99_ms:
            return Decision(
                Action.ROLL_BACK,
                f"{where}: p99 {obs.p99_ms:.1f} ms > {plan.max_p99_ms:g} ms over {obs.requests} requests",
                k,
            )
    held = now - state.step_started_at
    seen = obs.requests if obs is not None else 0
    if held < plan.hold_s:
        return Decision(Action.HOLD, f"{where}: held {held:.0f}/{plan.hold_s:g} s, {seen} requests", k)
    if seen < plan.min_requests:
        return Decision(
            Action.HOLD,
            f"{where}: hold over but {seen} of {plan.min_requests} requests (min_requests) seen: "
            "waiting for data",
            k,
        )
    health = _health(obs)
    if k + 1 < n:
        return Decision(
            Action.START_STEP,
            f"{where} held {held:.0f} s healthy ({health}); next {plan.steps[k + 1]}%",
            k + 1,
        )
    return Decision(Action.SUCCEED, f"{where} held {held:.0f} s healthy ({health})", k)


def _health(obs: Observation | None) -> str:
    if obs is None:
        return "no data"
    success = "-" if obs.success is None else f"{100 * obs.success:.2f}%"
    p99 = "-" if obs.p99_ms is None else f"{obs.p99_ms:.1f} ms"
    return f"{obs.requests} requests, success {success}, p99 {p99}"
