"""Runs a stress test: steps chosen by the plan and the analysis, measured, turned into a report.

:func:`run_steps` is the whole test on any generator, observer and clock (tests run it on a
virtual clock against a simulated service); :func:`run_against` wires the real pieces: the HTTP
transport to this OpenEAS's gateway on the loopback, the control plane observer, the monotonic
clock. A stop request (Ctrl-C, an API cancel) ends the current step early and still gives a
report, marked ``interrupted``.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

from openeas.kernel.clock import LOOP_CLOCK, Clock
from openeas.stress.analysis import (
    StepResult,
    knee_reason,
    next_offered,
    recommend,
    saturation,
)
from openeas.stress.generator import Generator, StepWindow
from openeas.stress.members import GroupInfo, breakdown, merge_tallies, share_notes
from openeas.stress.observe import Observer, Sample, window_mean
from openeas.stress.plan import Load, PlanError, StressPlan, load_bodies

REPORT_VERSION = 1
INTERRUPT_DRAIN_S = 5.0  # after a stop request, answers still in flight are awaited this long at most


def measure(
    index: int,
    w: StepWindow,
    plan: StressPlan,
    t0: float,
    samples: Sequence[Sample],
    now: float,
    *,
    final: bool,
    expected: dict[str, float] | None = None,
) -> StepResult:
    """A step's figures. Before the drain (``final=False``) unanswered requests count in the
    latency with their age so far, a lower bound; after it, they are errors (``unanswered``)."""
    rec = w.record
    pending = sum(rec.pending.values())
    latency = rec.latency if final else rec.latency_with_pending(now)
    by_status = dict(sorted(rec.by_status.items()))
    if final and pending:
        by_status["unanswered"] = pending
    errors = (rec.done - rec.ok) + (pending if final else 0)
    streamed = rec.ttft.count > 0
    return StepResult(
        index=index,
        load=plan.load.value,
        offered=w.offered,
        start_s=round(w.start - t0, 3),
        duration_s=round(w.duration_s, 3),
        send_rate=round(w.sent / w.duration_s, 3),
        throughput=round(w.ok_done / w.duration_s, 3),
        requests=rec.sent,
        ok=rec.ok,
        errors=errors,
        by_status=by_status,
        latency=latency.summary(),
        replicas=_round(window_mean(samples, w.start, w.end, "ready")),
        in_flight=_round(window_mean(samples, w.start, w.end, "in_flight")),
        ttft=rec.ttft.summary() if streamed else None,
        tpot=rec.tpot.summary() if rec.tpot.count else None,
        tokens_per_s=round(w.tokens_done / w.duration_s, 3) if streamed else None,
        members=None if rec.members is None else breakdown(rec.members, rec.sent, expected, w.duration_s),
    )


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


async def run_steps(
    plan: StressPlan,
    gen: Generator,
    observer: Observer,
    clock: Clock,
    *,
    on_step: Callable[[StepResult], None] | None = None,
    min_replicas: int = 1,
    replicas_fallback: float = 1.0,
    report_id: str | None = None,
    group: GroupInfo | None = None,
) -> dict[str, Any]:
    """Run the plan to its end (knee, last step, duration or request cap, stop request) and
    return the report (a JSON-ready dict)."""
    started_wall = time.time()
    t0 = clock.now()
    windows: list[StepWindow] = []
    steps: list[StepResult] = []
    end_reason = ""
    while True:
        offered = next_offered(plan, steps)
        end_reason = _reason_to_stop(plan, steps, gen, offered, clock.now() - t0)
        if end_reason or offered is None:
            break
        if plan.load == Load.RATE:
            w = await gen.rate_step(offered, plan.step_s, plan.arrival)
        else:
            w = await gen.concurrency_step(int(offered), plan.step_s)
        result = measure(len(steps), w, plan, t0, observer.samples(), clock.now(), final=False)
        result = replace(result, knee=knee_reason(result, steps, plan))
        windows.append(w)
        steps.append(result)
        if on_step is not None:
            on_step(result)
        if gen.stopped or gen.capped:
            cap = f"request cap: max_requests ({plan.max_requests}) sent"
            end_reason = "interrupted" if gen.stopped else cap
            break
    await gen.drain(INTERRUPT_DRAIN_S if gen.stopped else plan.timeout_s)
    samples = observer.samples()
    # The final figures: every answer is in now; the knee stays as decided during the run.
    expected = group.expected if group is not None else None
    now = clock.now()
    final = [
        replace(measure(s.index, w, plan, t0, samples, now, final=True, expected=expected), knee=s.knee)
        for s, w in zip(steps, windows, strict=True)
    ]
    sat = saturation(final, replicas_fallback)
    rec = recommend(sat, expected_peak_qps=plan.expected_peak_qps, min_replicas=min_replicas) if sat else None
    stream = any(s.ttft is not None for s in final)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "id": report_id or new_id(),
        "target": plan.target,
        "status": "interrupted" if gen.stopped else "completed",
        "end_reason": end_reason,
        "started_at": started_wall,
        "duration_s": round(clock.now() - t0, 3),
        "mode": plan.mode.value,
        "load": plan.load.value,
        "arrival": plan.arrival.value,
        "stream": stream,
        "requests": sum(s.requests for s in final),
        "errors": sum(s.errors for s in final),
        "saturation": sat.to_dict() if sat else None,
        "recommendation": rec.to_dict() if rec else None,
        "steps": [s.to_dict() for s in final],
        "timeline": [x.to_dict(t0) for x in samples if x.t >= t0 - 1.0],
        "plan": plan.model_dump(mode="json", exclude={"data_content", "body", "headers"}),
    }
    if group is not None:
        report.update(group_part(group, windows, clock.now() - t0))
    return report


def _reason_to_stop(
    plan: StressPlan, steps: Sequence[StepResult], gen: Generator, offered: float | None, elapsed: float
) -> str:
    """Why the run ends before its next step ("" to go on)."""
    if gen.stopped:
        return "interrupted"
    if offered is None:
        return "knee reached" if steps and steps[-1].knee else "ramp complete"
    # (a step ends a few ms after its planned length: that slack is not a reason to stop)
    if elapsed + plan.step_s > plan.duration_s + min(0.5, 0.1 * plan.step_s):
        return f"duration: base.duration ({plan.duration_s:g} s) reached"
    return ""


def group_part(group: GroupInfo, windows: Sequence[StepWindow], duration_s: float) -> dict[str, Any]:
    """A group's test: the group as tested and the whole run's breakdown by member."""
    tallies = merge_tallies(w.record.members or {} for w in windows)
    rows = breakdown(tallies, sum(w.record.sent for w in windows), group.expected, duration_s or None)
    return {"group": {**group.to_dict(), "notes": share_notes(rows, group)}, "members": rows}


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


# -- the real thing ---------------------------------------------------------------------------------


def loopback_target(gateway_url: str) -> tuple[str, int]:
    """``(host, port)`` of this OpenEAS's gateway, which must be on the loopback: a stress test
    never sends load anywhere else. A gateway bound to all interfaces is reached on 127.0.0.1."""
    parts = urlsplit(gateway_url)
    host = parts.hostname or ""
    port = parts.port or 80
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1", port
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or not ip.is_loopback:
        raise PlanError(
            [
                f"target: the gateway is at {gateway_url}, not on this machine's loopback: a stress "
                "test only loads this OpenEAS's own services through its gateway on 127.0.0.1"
            ]
        )
    return host, port


async def run_against(
    plan: StressPlan,
    *,
    gateway_url: str,
    token: str,
    observer: Observer,
    on_step: Callable[[StepResult], None] | None = None,
    on_generator: Callable[[Generator], None] | None = None,
    min_replicas: int = 1,
    replicas_fallback: float = 1.0,
    report_id: str | None = None,
    group: GroupInfo | None = None,
) -> dict[str, Any]:
    """Run ``plan`` against ``/api/predict/<target>`` on the gateway. ``on_generator`` receives the
    generator before the first step (call its ``stop()`` to interrupt). ``group``: the target is
    that group's endpoint (``token`` is the group's); each answer is attributed to its member."""
    from openeas.stress.client import HttpTransport, build_requests

    host, port = loopback_target(gateway_url)
    bodies = load_bodies(plan)
    headers = {"Authorization": token, **plan.headers}
    path = f"/api/predict/{quote(plan.target, safe='.')}{plan.path}"
    transport = HttpTransport(
        host,
        port,
        build_requests(plan.method, host, port, path, headers, bodies),
        max_connections=plan.max_connections,
        timeout_s=plan.timeout_s,
        by_member=group is not None,
    )
    clock = LOOP_CLOCK
    gen = Generator(
        transport, clock, len(bodies), seed=plan.seed, budget=plan.max_requests, by_member=group is not None
    )
    if on_generator is not None:
        on_generator(gen)
    try:
        await transport.warm(min(8, plan.max_connections))
        report = await run_steps(
            plan,
            gen,
            observer,
            clock,
            on_step=on_step,
            min_replicas=min_replicas,
            replicas_fallback=replicas_fallback,
            report_id=report_id,
            group=group,
        )
    finally:
        await transport.close()
    report["connections"] = transport.connections
    return report
