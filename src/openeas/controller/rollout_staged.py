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

from openeas.kernel.rollout import (
    Action,
    Decision,
    Observation,
    RolloutPlan,
    RolloutState,
    Status,
    validate_steps,
)

__all__ = ["decide", "step_weights", "validate_steps"]


def step_weights(percent: int) -> tuple[int, int]:
    """(candidate, baseline) weights out of 1000 for ``percent``% to the candidate."""
    return percent * 10, 1000 - percent * 10


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
