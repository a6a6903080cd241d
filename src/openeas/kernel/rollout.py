"""A staged rollout as plain values: its plan, where it stands, what the candidate did over a
step and the decision taken on it. The store keeps them, the controller decides with them
(``openeas.controller.rollout_staged``), the API shows them. Standard library only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from itertools import pairwise
from typing import Any

from openeas.kernel.states import check_table

DEFAULT_MIN_REQUESTS = 20  # candidate answers a step needs before it is judged


class Status(StrEnum):
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


ACTIVE = (Status.RUNNING, Status.PAUSED)
FINAL = frozenset(Status) - frozenset(ACTIVE)
# Allowed rollout status changes: from → to (the store checks each write). A running rollout
# pauses, ends well (its last step held), rolls back (an SLO breach) or is aborted (by the
# operator, or because a member left the group); a paused one resumes or is aborted, and is never
# judged (so neither succeeds nor rolls back). An ended rollout stays ended: a new one replaces
# its row. Writing the status it already has is allowed (a new step, a new window).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RUNNING: frozenset({Status.PAUSED, Status.SUCCEEDED, Status.ROLLED_BACK, Status.ABORTED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.ABORTED}),
    Status.SUCCEEDED: frozenset(),
    Status.ROLLED_BACK: frozenset(),
    Status.ABORTED: frozenset(),
}
assert set(TRANSITIONS) == set(Status) and all(not TRANSITIONS[s] for s in FINAL)


def check_transition(old: str, new: str) -> Status:
    """``new`` as a Status; raises IllegalTransition when ``old → new`` is not allowed."""
    return check_table(Status, TRANSITIONS, "rollout status", old, new)


class Action(StrEnum):
    START_STEP = "start_step"  # set the weights of `Decision.step`
    HOLD = "hold"  # nothing to change yet
    ROLL_BACK = "roll_back"  # the SLO was breached: all traffic back to the baseline
    SUCCEED = "succeed"  # the last step held healthy
    NONE = "none"  # not running (paused or finished)


def validate_steps(steps: Sequence[int]) -> list[str]:
    """Every problem of a rollout's ``steps`` (percent to the candidate), one line each."""
    errors = []
    if not steps:
        errors.append("steps: give at least one step (percent to the candidate), e.g. 5,25,50,100")
    for i, p in enumerate(steps):
        if not 1 <= p <= 100:
            errors.append(f"steps[{i}]: must be a percentage 1..100, got {p}")
    if any(b <= a for a, b in pairwise(steps)):
        errors.append(f"steps: must increase, got {','.join(map(str, steps))}")
    return errors


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
    # An abort or a rollback was written and the group's routes are still to be restored to the
    # plan's ``restore``: the rollout controller converges on it (the API only writes the abort).
    restore_pending: bool = False

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
