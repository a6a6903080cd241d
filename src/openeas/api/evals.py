"""The control-plane API of eval sets: ``POST /api/v1/eval`` runs one against a service's direct
endpoint and stores the run; ``GET /api/v1/eval[?service=]`` lists runs, ``GET
/api/v1/eval/{id}`` reads one. `eval_gate` is the staged rollout's step 0 (api/rollouts.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from openeas.controller.evalrun import DEFAULT_MIN_PASS, DEFAULT_TIMEOUT_S, failure_lines, run_eval
from openeas.errors import Conflict, NotFound, SpecError
from openeas.evalset import EvalSetError, parse_eval_set
from openeas.store import eval_runs
from openeas.store.groups import GroupStore

MAX_EVAL_SET_BYTES = 4 * 1024 * 1024  # bytes of JSONL one run accepts


class EvalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="a service, or group.member: the member's direct endpoint")
    eval_set: str = Field(description="the eval set's JSONL text (docs/balancers.md, Eval sets)")
    min_pass: float | None = Field(default=None, ge=0, le=1, description="pass rate the run must reach")
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=600, description="seconds per case")


def resolve_target(cp: Any, target: str) -> str:
    """The service a target names: a service, or ``group.member`` (a member of that group)."""
    names = {s.name for s in cp.store.list_services()}
    if target in names:
        return target
    group, dot, member = target.partition(".")
    if dot:
        g = GroupStore(cp.store).get(group)  # NotFound names the group
        if g.member(member) is None:
            raise NotFound(f"target: '{member}' is not a member of group '{group}'")
        return member
    raise NotFound(f"target: no service '{target}' (and not group.member)")


def parse_set(text: str, field: str = "eval_set") -> list[Any]:
    if len(text.encode()) > MAX_EVAL_SET_BYTES:
        raise SpecError([f"{field}: larger than {MAX_EVAL_SET_BYTES} bytes"])
    try:
        return parse_eval_set(text)
    except EvalSetError as e:
        raise SpecError([f"{field}: {err}" for err in e.errors]) from None


def run_and_store(cp: Any, target: str, service: str, cases: list[Any], timeout_s: float) -> dict[str, Any]:
    rep = run_eval(cp.gateway_url, target, service, cp.store.token(service), cases, timeout_s=timeout_s)
    eval_runs.save(cp.store, rep)
    return rep


def eval_gate(
    cp: Any, group: str, candidate: str, cases: list[Any], min_pass: float | None
) -> dict[str, Any]:
    """A rollout's step 0: run the set on the candidate; Conflict (and a warning event on the
    candidate naming the failing prompts) when it passes less than ``min_pass``."""
    threshold = DEFAULT_MIN_PASS if min_pass is None else min_pass
    rep = run_and_store(cp, f"{group}.{candidate}", candidate, cases, DEFAULT_TIMEOUT_S)
    if rep["pass_rate"] < threshold:
        head = (
            f"eval gate: '{candidate}' passed {rep['passed']}/{rep['cases']} ({rep['pass_rate']:.0%}), "
            f"below min_pass {threshold:.0%} (run {rep['id']}); the rollout did not start"
        )
        cp.store.record_event(
            candidate, "EvalGateFailed", "\n".join([head, *failure_lines(rep)]), type="Warning"
        )
        raise Conflict("; ".join([head, *failure_lines(rep, 3)]))
    cp.store.record_event(
        candidate, "EvalGatePassed", f"eval gate: passed {rep['passed']}/{rep['cases']} (run {rep['id']})"
    )
    return rep


def add_eval_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    @app.post("/api/v1/eval", status_code=201, dependencies=auth, tags=["eval"])
    def run(body: EvalBody) -> dict[str, Any]:
        """Send each case to the target's direct endpoint, check the answers, store the run."""
        service = resolve_target(cp, body.target)
        cases = parse_set(body.eval_set)
        rep = run_and_store(cp, body.target, service, cases, body.timeout_s)
        if body.min_pass is not None:
            rep["min_pass"] = body.min_pass
            rep["ok"] = rep["pass_rate"] >= body.min_pass
        return rep

    @app.get("/api/v1/eval", dependencies=auth, tags=["eval"])
    def list_runs(service: str | None = None, limit: int = 50) -> dict[str, Any]:
        return {"runs": eval_runs.list_runs(cp.store, service, max(1, min(limit, 500)))}

    @app.get("/api/v1/eval/{run_id}", dependencies=auth, tags=["eval"])
    def get_run(run_id: str) -> dict[str, Any]:
        return eval_runs.get(cp.store, run_id)
