"""``openeas simulate``: a request trace replayed through the autoscaler's own ``decide()``
(docs/simulate.md), and ``openeas trace``: the field guide's traffic shapes written as a trace.

``openeas simulate -f spec.json --trace trace.csv [--compare other.json]`` runs in the CLI's own
process: it prices each spec by the catalog (``--catalog``, else ``OPENEAS_CATALOG``, else the
shipped one), takes the cold-start durations and the per-replica capacity from ``--cold-start``
and ``--capacity``, or from the server's measurements of ``--service NAME`` (its recent starts,
its newest stress report's saturation point), and prints one column per spec: replica-hours,
cost, peak replicas, scale events, cold starts, the share of requests held or slowed by a cold
start, and the p99 estimate; with ``--compare``, the difference. Nothing is defaulted: a missing
input is an error that says which flag gives it.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from openeas.autoscaler.simulate import DECIDE_EVERY_S, Result, simulate
from openeas.autoscaler.trace import SHAPES, Trace, generate, load_trace, shape_rates, write_trace
from openeas.cli import render
from openeas.cli.common import client as _client
from openeas.cli.common import fail as _fail
from openeas.cli.common import read_spec
from openeas.cost import Pricing, load_catalog, map_spec
from openeas.errors import SpecError
from openeas.sdk.client import ApiError
from openeas.spec import parse_spec

ENV_CATALOG = "OPENEAS_CATALOG"


@dataclass(frozen=True)
class Inputs:
    """What the simulation takes besides the spec and the trace, and where each came from."""

    cold_starts_s: list[float]
    cold_source: str
    capacity_qps: float
    capacity_source: str


def parse_seconds(text: str) -> list[float]:
    """``--cold-start 30`` or ``25,30,60``: seconds, each ≥ 0."""
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise SpecError([f"--cold-start: {part.strip()!r} is not a number of seconds"]) from None
        if not v >= 0 or v == float("inf"):
            raise SpecError([f"--cold-start: {part.strip()!r}; each must be a finite number of seconds ≥ 0"])
        out.append(v)
    return out


def measured(service: str) -> tuple[list[float], float | None, str]:
    """The server's measurements of ``service``: its recent starts' total seconds, and the
    saturation point (req/s per replica) of its newest stress report that found one, and its id."""
    c = _client()
    starts = c.request("GET", f"/api/v1/services/{service}/coldstart")
    totals = [float(r["total_s"]) for r in starts.get("recent") or [] if r.get("total_s") is not None]
    reports = c.request("GET", "/api/v1/stress", params={"target": service}).get("reports") or []
    for r in reports:  # newest first
        if r.get("saturation_found") and r.get("qps_per_replica"):
            return totals, float(r["qps_per_replica"]), f"stress report {r.get('id')}"
    return totals, None, ""


def resolve_inputs(
    cold_start: str | None,
    capacity: float | None,
    service: str | None,
    measure: Callable[[str], tuple[list[float], float | None, str]] = measured,
) -> Inputs:
    """The inputs from the flags, else from ``measure(service)`` (the server's); a flag wins."""
    errors: list[str] = []
    cold = parse_seconds(cold_start) if cold_start is not None else []
    cold_src = "--cold-start" if cold else ""
    cap_src = "--capacity" if capacity is not None else ""
    if capacity is not None and not capacity > 0:
        errors.append(f"--capacity: {capacity:g} requests/s per replica; must be > 0")
    if service is not None and (not cold or capacity is None):
        starts, sat, report = measure(service)
        if not cold and starts:
            cold, cold_src = starts, f"{service}'s last {len(starts)} cold starts on the server"
        if capacity is None and sat is not None:
            capacity, cap_src = sat, f"{service}'s {report}"
    if not cold:
        where = f"; {service} has no measured start yet" if service else ""
        errors.append(f"cold starts: give --cold-start SECONDS[,SECONDS…] or --service NAME{where}")
    if capacity is None:
        where = f"; {service} has no stress report with a saturation point" if service else ""
        errors.append(f"capacity: give --capacity REQ_PER_S (per replica) or --service NAME{where}")
    if errors:
        raise SpecError(errors)
    assert capacity is not None
    return Inputs(cold, cold_src, capacity, cap_src)


def _num(v: float, digits: int = 2) -> str:
    return f"{v:,.{digits}f}"


def _pct(v: float) -> str:
    return f"{v * 100:.3f}%"


ROWS: tuple[tuple[str, str, Any], ...] = (
    # (label, Result field, format)
    ("replica-hours", "replica_seconds", lambda v: _num(v / 3600)),
    ("cost", "cost", lambda v: "unpriced" if v is None else _num(v)),
    ("peak replicas", "peak_replicas", str),
    ("scale events", "scale_events", str),
    ("cold starts", "cold_starts", str),
    ("requests held (no Ready replica)", "held_share", _pct),
    ("requests that met a cold start", "cold_share", _pct),
    ("p99 estimate (s)", "p99_s", lambda v: _num(v, 3)),
    ("queue wait mean (s, async)", "queue_wait_mean_s", lambda v: "-" if v is None else _num(v, 3)),
    ("queue wait p99 (s, async)", "queue_wait_p99_s", lambda v: "-" if v is None else _num(v, 3)),
)


def _diff(field: str, a: Any, b: Any) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    if field in ("held_share", "cold_share"):
        return f"{d * 100:+.3f} pt"
    rel = f" ({d / a * 100:+.1f}%)" if a else ""
    if field == "replica_seconds":
        d /= 3600
    return (f"{d:+,.2f}" if isinstance(d, float) else f"{d:+d}") + rel


def render_table(names: list[str], results: list[Result], currency: str) -> str:
    head = ["", *names, *(["difference"] if len(results) == 2 else [])]
    table = [head]
    for label, field, fmt in ROWS:
        vals = [getattr(r, field) for r in results]
        if field.startswith("queue_wait") and all(v is None for v in vals):
            continue  # no async service: no queue
        row = [f"{label} ({currency})" if field == "cost" else label, *(fmt(v) for v in vals)]
        if len(results) == 2:
            row.append(_diff(field, *vals))
        table.append(row)
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = []
    for row in table:
        first = row[0].ljust(widths[0])
        lines.append("  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]))
    return "\n".join(lines)


def _trace_line(path: str, t: Trace) -> str:
    since = datetime.fromtimestamp(t.start, UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"trace {path}: {t.seconds:,} s ({t.seconds / 86_400:.2f} days) from {since} UTC, "
        f"{t.requests:,.0f} requests"
    )


def as_json(
    path: str, tr: Trace, inputs: Inputs, runs: list[tuple[str, Pricing, Result]], decide_every: float
) -> dict[str, Any]:
    return {
        "trace": {"path": path, "start": tr.start, "seconds": tr.seconds, "requests": round(tr.requests)},
        "inputs": {
            "cold_starts_s": inputs.cold_starts_s,
            "cold_starts_from": inputs.cold_source,
            "capacity_qps": inputs.capacity_qps,
            "capacity_from": inputs.capacity_source,
            "decide_every_s": decide_every,
        },
        "runs": [{"spec": f, "pricing": p.as_dict(), **r.as_dict()} for f, p, r in runs],
    }


def as_text(
    path: str, tr: Trace, inputs: Inputs, runs: list[tuple[str, Pricing, Result]], currency: str
) -> str:
    cold = ", ".join(f"{c:g}" for c in inputs.cold_starts_s)
    return "\n".join(
        [
            _trace_line(path, tr),
            f"cold starts: {cold} s ({inputs.cold_source}); capacity: {inputs.capacity_qps:g} req/s "
            f"per replica ({inputs.capacity_source})",
            *(f"price of {f}: {p.how}" for f, p, _ in runs),
            "",
            render_table([f for f, _, _ in runs], [r for _, _, r in runs], currency),
        ]
    )


def simulate_cmd(
    file: Annotated[str, typer.Option("-f", "--file", help="Service spec (EAS JSON or YAML).")],
    trace: Annotated[str, typer.Option("--trace", help="Request trace (CSV, docs/simulate.md).")],
    compare: Annotated[
        str | None, typer.Option("--compare", help="A second spec, simulated on the same trace side by side.")
    ] = None,
    cold_start: Annotated[
        str | None,
        typer.Option("--cold-start", help="Cold-start seconds, one or a comma list (cycled in order)."),
    ] = None,
    capacity: Annotated[
        float | None,
        typer.Option("--capacity", help="Requests/s one replica takes (a stress report's saturation)."),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option("--service", help="Take cold starts and capacity the server measured for this service."),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Instance catalog (default: OPENEAS_CATALOG, else the shipped one)."),
    ] = None,
    tokens_per_s: Annotated[
        float | None,
        typer.Option("--tokens-per-s", min=0.001, help="A trace with a tokens column: a replica's tokens/s."),
    ] = None,
    decide_every: Annotated[
        float,
        typer.Option("--decide-every", min=1, help="Seconds of virtual time between two decisions (≥ 1)."),
    ] = DECIDE_EVERY_S,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as one line of JSON.")] = False,
) -> None:
    """Replay a request trace through the autoscaler's own decide(): replica-hours, cost, cold
    starts, held requests and a p99 estimate, for one spec or two side by side."""
    files = [file, *([compare] if compare else [])]
    specs = [parse_spec(read_spec(f, groups_ok=False)) for f in files]
    errors: list[str] = []
    tr = cat = inputs = None
    for step in ("trace", "catalog", "inputs"):
        try:
            if step == "trace":
                tr = load_trace(trace, tokens_per_s)
            elif step == "catalog":
                cat = load_catalog(catalog or os.environ.get(ENV_CATALOG) or None)
            else:
                inputs = resolve_inputs(cold_start, capacity, service)
        except SpecError as exc:
            errors += exc.errors
        except ApiError as exc:
            errors += [f"--service {service}: {exc.message}", *exc.errors]
    if errors or tr is None or cat is None or inputs is None:
        _fail("cannot simulate", errors, code=2)
    runs: list[tuple[str, Pricing, Result]] = []
    for f, s in zip(files, specs, strict=True):
        p = map_spec(s, cat)
        try:
            r = simulate(
                s,
                tr,
                cold_starts_s=inputs.cold_starts_s,
                capacity_qps=inputs.capacity_qps,
                price_per_hour=p.per_hour,
                currency=cat.currency,
                decide_every_s=decide_every,
            )
        except SpecError as exc:
            _fail(f"cannot simulate {f}", exc.errors, code=2)
        runs.append((f, p, r))
    if json_out:
        render.print_json(as_json(trace, tr, inputs, runs, decide_every))
    else:
        render.out.print(
            as_text(trace, tr, inputs, runs, cat.currency), highlight=False, soft_wrap=True, markup=False
        )


def trace_cmd(
    shape: Annotated[str | None, typer.Option("--shape", help=f"One of {', '.join(SHAPES)}.")] = None,
    days: Annotated[
        int | None, typer.Option("--days", min=1, max=400, help="Days from a Monday 00:00 UTC.")
    ] = None,
    peak_qps: Annotated[
        float | None, typer.Option("--peak-qps", min=0, help="Requests/s at the peak.")
    ] = None,
    base_qps: Annotated[
        float | None, typer.Option("--base-qps", min=0, help="Requests/s off the peak.")
    ] = None,
    duration_s: Annotated[
        float | None, typer.Option("--duration-s", min=0, help="Seconds each request takes.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Poisson arrivals.")] = 0,
    service: Annotated[
        str | None, typer.Option("--service", help="Export the gateways' own counts of this service instead.")
    ] = None,
    seconds: Annotated[
        int,
        typer.Option("--seconds", min=1, max=900, help="With --service: the last N seconds (at most 900)."),
    ] = 900,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write here (default: stdout).")] = None,
) -> None:
    """Write a trace CSV (docs/simulate.md): one of the field guide's traffic shapes, or with
    --service the gateways' own counts of a service over the last minutes."""
    if service is not None:
        try:
            text = _client().request_text(
                "GET", f"/api/v1/services/{service}/trace", params={"seconds": seconds}
            )
        except ApiError as exc:
            _fail(f"cannot export {service}'s trace", [exc.message, *exc.errors])
    else:
        given = {"--shape": shape, "--days": days, "--peak-qps": peak_qps, "--base-qps": base_qps,
                 "--duration-s": duration_s}  # fmt: skip
        missing = [flag for flag, v in given.items() if v is None]
        if missing:
            _fail(
                "cannot generate",
                [f"{', '.join(missing)}: needed for a shape (or give --service NAME)"],
                code=2,
            )
        assert shape is not None and days is not None and peak_qps is not None and base_qps is not None
        assert duration_s is not None
        try:
            t = generate(shape_rates(shape, days, peak_qps, base_qps), duration_s, seed)
        except SpecError as exc:
            _fail("cannot generate", exc.errors, code=2)
        buf = io.StringIO()
        write_trace(t, buf)
        text = buf.getvalue()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
