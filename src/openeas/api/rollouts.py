"""The control-plane API of staged rollouts: ``/api/v1/groups/{name}/rollout[/pause|resume|abort]``.

Starting one writes its plan and state to the store; the rollout controller (controller/
rollout_loop.py, in the server) drives it from there, so it survives a restart."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import ConfigDict, Field

from openeas.api.evals import eval_gate, parse_set
from openeas.errors import Conflict, SpecError
from openeas.kernel.rollout import DEFAULT_MIN_REQUESTS, RolloutPlan, RolloutState, Status, validate_steps
from openeas.spec.numbers import CheckedNumbers
from openeas.store.groups import Group, GroupStore
from openeas.store.rollouts import RolloutStore

DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_HOLD_S = 3600.0


class RolloutBody(CheckedNumbers):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    to: str = Field(description="the candidate member")
    from_: str | None = Field(
        default=None,
        alias="from",
        description="the baseline member (default: the other member with most weight)",
    )
    steps: list[int] = Field(default=list(DEFAULT_STEPS), description="percent to the candidate at each step")
    hold_s: float = Field(default=DEFAULT_HOLD_S, ge=0, description="seconds each step is held and checked")
    max_p99_ms: float | None = Field(
        default=None, gt=0, description="the candidate's p99 limit over a step, ms"
    )
    min_success: float | None = Field(
        default=None, ge=0, le=100, description="the candidate's lowest success ratio over a step, percent"
    )
    min_requests: int = Field(
        default=DEFAULT_MIN_REQUESTS, ge=1, description="candidate answers a step needs before it is judged"
    )
    eval_set: str | None = Field(
        default=None,
        description="eval set JSONL text: run on the candidate's direct endpoint before any weight moves",
    )
    min_pass: float | None = Field(
        default=None, ge=0, le=1, description="the eval set's pass rate the candidate needs (default 0.95)"
    )


def rollout_view(plan: RolloutPlan, state: RolloutState, controller: Any) -> dict[str, Any]:
    st = state.to_dict()
    for internal in ("baseline_codes", "baseline_buckets", "rebase", "restore_pending"):
        st.pop(internal, None)
    if state.status in (Status.ROLLED_BACK, Status.ABORTED):
        # RolledBack is written first (it survives a crash), then the routes are restored and the
        # gateways acknowledge them: only then does traffic no longer reach the candidate.
        st["routes_restored"] = not state.restore_pending
    out: dict[str, Any] = {
        "group": plan.group,
        "plan": {k: v for k, v in plan.to_dict().items() if k != "restore"},
        "state": st,
        "percent": plan.steps[state.step] if state.step >= 0 else 0,
        "step": f"{state.step + 1}/{len(plan.steps)}" if state.step >= 0 else f"0/{len(plan.steps)}",
    }
    last = controller.last.get(plan.group) if controller is not None else None
    if last is not None:
        decision, obs = last
        out["last_look"] = {
            "action": decision.action.value,
            "reason": decision.reason,
            "observation": None if obs is None else obs.__dict__,
        }
    return out


def plan_of(g: Group, body: RolloutBody) -> RolloutPlan:
    """The plan of a rollout of group ``g`` as ``body`` asks; a 400
    naming every problem (steps, traffic mode, members)."""
    errors = validate_steps(body.steps)
    if g.traffic_mode != "customized":
        errors.append(
            f"group '{g.name}' routes by ready replicas (traffic_mode auto): a rollout sets weights"
        )
    if g.member(body.to) is None:
        errors.append(f"to: '{body.to}' is not a member of group '{g.name}'")
    baseline = body.from_
    if baseline is None:
        others = sorted(
            (m for m in g.members if m.service != body.to and m.weight > 0), key=lambda m: -m.weight
        )
        if not others:
            errors.append(f"from: group '{g.name}' has no other member with weight > 0 to roll out from")
        else:
            baseline = others[0].service
    elif g.member(baseline) is None:
        errors.append(f"from: '{baseline}' is not a member of group '{g.name}'")
    elif baseline == body.to:
        errors.append("from: the baseline and the candidate are the same member")
    if errors:
        raise SpecError(errors)
    assert baseline is not None
    restore = tuple(
        {"service": m.service, "weight": m.weight, "mirror_weight": m.mirror_weight}
        | ({"match": m.match} if m.match else {})
        for m in g.members
    )
    plan = RolloutPlan(
        group=g.name,
        candidate=body.to,
        baseline=baseline,
        steps=tuple(body.steps),
        hold_s=body.hold_s,
        max_p99_ms=body.max_p99_ms,
        min_success=body.min_success,
        min_requests=body.min_requests,
        restore=restore,
    )
    return plan


def add_rollout_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    groups = GroupStore(cp.store)
    rollouts = RolloutStore(cp.store)

    def controller() -> Any:
        return cp.rollout_controller

    def wake() -> None:
        c = controller()
        if c is not None:
            c.wake()

    @app.post("/api/v1/groups/{name}/rollout", status_code=201, dependencies=auth, tags=["groups"])
    def start_rollout(name: str, body: RolloutBody) -> dict[str, Any]:
        """Drive the weights from the baseline to ``to`` through ``steps``, holding each
        ``hold_s`` seconds and rolling back on an SLO breach."""
        errors: list[str] = []
        plan = None
        try:
            plan = plan_of(groups.get(name), body)
        except SpecError as e:
            errors.extend(e.errors)
        cases = None
        if body.eval_set is not None:
            try:
                cases = parse_set(body.eval_set)
            except SpecError as e:
                errors.extend(e.errors)
        elif body.min_pass is not None:
            errors.append("min_pass: needs eval_set")
        if errors or plan is None:
            raise SpecError(errors)
        if cases is not None:  # step 0: a failing candidate is refused here, before any weight moves
            eval_gate(cp, name, body.to, cases, body.min_pass)
        plan, state = rollouts.create(plan)
        wake()
        return rollout_view(plan, state, controller())

    @app.get("/api/v1/groups/{name}/rollout", dependencies=auth, tags=["groups"])
    def get_rollout(name: str) -> dict[str, Any]:
        plan, state = rollouts.get(name)
        return rollout_view(plan, state, controller())

    def command(name: str, what: str) -> dict[str, Any]:
        plan, state = rollouts.command(name, what)  # an abort: the controller restores the routes
        wake()
        return rollout_view(plan, state, controller())

    @app.post("/api/v1/groups/{name}/rollout/pause", dependencies=auth, tags=["groups"])
    def pause(name: str) -> dict[str, Any]:
        """Keep the weights where they are and stop judging."""
        return command(name, "pause")

    @app.post("/api/v1/groups/{name}/rollout/resume", dependencies=auth, tags=["groups"])
    def resume(name: str) -> dict[str, Any]:
        """Go on from the current step (its hold starts again)."""
        return command(name, "resume")

    @app.post("/api/v1/groups/{name}/rollout/abort", dependencies=auth, tags=["groups"])
    def abort(name: str) -> dict[str, Any]:
        """End the rollout and restore the routes the group had when it started."""
        return command(name, "abort")


__all__ = ["Conflict", "add_rollout_routes"]
