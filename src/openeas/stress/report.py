"""A stress report shown three ways: a terminal table (rich), JSON (the report itself) and one
self-contained HTML page with inline SVG charts (no script, no CDN: it opens offline and can be
mailed as one file).

Charts: latency (p50, p99) against the offered load, throughput against the offered load (with
the "served everything" diagonal), and ready replicas and requests in flight over time. A group's
test adds the breakdown by member (requests, errors, latency, share against the weight's share).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

Point = tuple[float, Any]  # (x, y); a None y is a gap (no data)
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def _num(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _lat(step: dict[str, Any], key: str) -> Any:
    return (step.get("latency") or {}).get(key)


def steps_table(report: dict[str, Any]) -> Table:
    """One row per step."""
    stream = bool(report.get("stream"))
    unit = "req/s" if report.get("load") == "rate" else "in flight"
    t = Table(title=f"stress test of {report.get('target')} ({report.get('mode')})", title_justify="left")
    for col in ("step", f"offered ({unit})", "sent/s", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"):
        t.add_column(col, justify="right")
    t.add_column("errors", justify="right")
    t.add_column("replicas", justify="right")
    t.add_column("in flight", justify="right")
    if stream:
        for col in ("TTFT p50", "TPOT p50", "tok/s"):
            t.add_column(col, justify="right")
    t.add_column("")
    for s in report.get("steps") or []:
        row = [
            str(s["index"] + 1),
            _num(s["offered"]),
            _num(s["send_rate"]),
            _num(s["throughput"]),
            _num(_lat(s, "p50")),
            _num(_lat(s, "p90")),
            _num(_lat(s, "p99")),
            _num(_lat(s, "p99.9")),
            str(s["errors"]),
            _num(s.get("replicas")),
            _num(s.get("in_flight")),
        ]
        if stream:
            row += [
                _num((s.get("ttft") or {}).get("p50")),
                _num((s.get("tpot") or {}).get("p50"), 2),
                _num(s.get("tokens_per_s")),
            ]
        row.append("knee" if s.get("knee") else "")
        t.add_row(*row, style="bold red" if s.get("knee") else None)
    return t


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def members_table(report: dict[str, Any]) -> Table:
    """A group's test: one row per member (the whole run), then the unattributed requests."""
    group = report.get("group") or {}
    t = Table(title=f"by member of group {group.get('name', report.get('target'))}", title_justify="left")
    cols = ("member", "requests", "ok", "errors", "ok/s", "p50 ms", "p90 ms", "p99 ms", "share", "weight's")
    for col in cols:
        t.add_column(col, justify="left" if col == "member" else "right")
    for r in report.get("members") or []:
        t.add_row(
            str(r["member"]), str(r["requests"]), str(r["ok"]), str(r["errors"]), _num(r.get("throughput")),
            _num(r.get("p50")), _num(r.get("p90")), _num(r.get("p99")), _pct(r.get("share")),
            _pct(r.get("expected_share")),
        )  # fmt: skip
    return t


def _group_lines(report: dict[str, Any]) -> list[str]:
    group = report.get("group")
    if not group:
        return []
    return [
        f"group {group.get('name')}: the figures below are its endpoint's as a whole, per replica "
        "across its members (each member's own share, errors and latency: the table by member)",
        *(group.get("notes") or []),
    ]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Saturation and recommendation in a few sentences."""
    lines = [
        f"{report.get('status')}: {report.get('end_reason')} · {report.get('requests')} requests, "
        f"{report.get('errors')} errors in {report.get('duration_s')} s",
        *_group_lines(report),
    ]
    sat = report.get("saturation")
    if sat:
        what = "saturation" if sat.get("found") else "not saturated (lower bounds)"
        lines.append(
            f"{what}: {_num(sat['qps_per_replica'])} req/s and {_num(sat['concurrency_per_replica'], 2)} "
            f"requests in flight per replica ({_num(sat['qps'])} req/s on {_num(sat['replicas'])} replicas)"
        )
        if sat.get("found"):
            lines.append(f"knee: {sat.get('reason')}")
    rec = report.get("recommendation")
    if rec:
        whose = " (each member alike: a group has no autoscaling of its own)" if report.get("group") else ""
        lines.append(
            f"recommendation{whose}: autoscaling metric {rec['metric']}, "
            f"target {_num(rec['target'], 2)} per replica, "
            f"min_replicas {rec['min_replicas']}, max_replicas {rec['max_replicas']} "
            f"(peak {_num(rec['expected_peak_qps'])} req/s, {rec['peak_source']})"
        )
    return lines


# -- HTML -------------------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.floor(lo / step) * step
    out, v = [], first
    while v <= hi + step * 0.5:
        out.append(round(v, 10))
        v += step
    return out


def svg_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    x_label: str,
    y_label: str,
    diagonal: bool = False,
    width: int = 640,
    height: int = 300,
) -> str:
    """A line chart (points marked) as inline SVG."""
    pts = [p for _, ps in series for p in ps if p[1] is not None]
    if not pts:
        return "<p>(no data)</p>"
    left, right, top, bottom = 64, 16, 16, 48
    xs = _ticks(min(0.0, min(p[0] for p in pts)), max(p[0] for p in pts))
    top_y = max(p[1] for p in pts)
    ys = _ticks(0.0, max(top_y, *(p[0] for p in pts)) if diagonal else top_y)
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for x in xs:
        out.append(f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + ph}" class="grid"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:g}</text>')
    for y in ys:
        out.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
        f"{html.escape(y_label)}</text>"
    )
    if diagonal:
        d = min(x1, y1)
        out.append(
            f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(d):.1f}" y2="{sy(d):.1f}" class="diag"/>'
        )
    for i, (name, ps) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        good = [p for p in ps if p[1] is not None]
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in good]
        out.append(
            f'<text x="{left + 10 + 150 * i}" y="{top + 12}" fill="{color}" class="legend">'
            f"{html.escape(name)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#111;max-width:1100px}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
tr.knee td{background:#fee2e2;font-weight:600}
.chart text{font-size:11px;fill:#333} .chart .legend{font-weight:600}
.chart .grid{stroke:#e5e7eb} .chart .diag{stroke:#9ca3af;stroke-dasharray:4 4}
.box{background:#f3f4f6;padding:.8em 1em;border-radius:6px}
"""


def to_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML page."""
    e = html.escape
    steps = report.get("steps") or []
    unit = "req/s" if report.get("load") == "rate" else "requests in flight"
    offered = [float(s["offered"]) for s in steps]
    started = report.get("started_at")
    when = dt.datetime.fromtimestamp(started, dt.UTC).isoformat() if isinstance(started, int | float) else "?"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>stress test {e(str(report.get('id')))} — {e(str(report.get('target')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Stress test of <code>{e(str(report.get('target')))}</code></h1>",
        f"<p>{e(str(report.get('id')))} · started {e(when)} · mode {e(str(report.get('mode')))} · "
        f"{e(str(report.get('load')))} load, {e(str(report.get('arrival')))} arrivals</p>",
        "<div class='box'>" + "<br>".join(e(line) for line in summary_lines(report)) + "</div>",
    ]
    rec = report.get("recommendation")
    if rec and rec.get("why"):
        parts.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in rec["why"]) + "</ul>")
    lat_series = [
        (name, [(o, _lat(s, key)) for o, s in zip(offered, steps, strict=True)])
        for name, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"))
    ]
    parts += [
        "<h2>Latency against offered load</h2>",
        svg_chart(lat_series, x_label=f"offered ({unit})", y_label="ms"),
        "<h2>Throughput against offered load</h2>",
        svg_chart(
            [
                ("answered ok/s", [(o, s["throughput"]) for o, s in zip(offered, steps, strict=True)]),
                ("sent/s", [(o, s["send_rate"]) for o, s in zip(offered, steps, strict=True)]),
            ],
            x_label=f"offered ({unit})",
            y_label="req/s",
            diagonal=report.get("load") == "rate",
        ),
    ]
    timeline = report.get("timeline") or []
    parts.append("<h2>Replicas and requests in flight over time</h2>")
    parts.append(
        svg_chart(
            [
                ("ready replicas", [(p["t"], p.get("ready")) for p in timeline]),
                ("desired replicas", [(p["t"], p.get("desired")) for p in timeline]),
            ],
            x_label="seconds",
            y_label="replicas",
        )
    )
    parts.append(
        svg_chart(
            [("in flight at the gateway", [(p["t"], p.get("in_flight")) for p in timeline])],
            x_label="seconds",
            y_label="requests",
        )
    )
    if report.get("stream"):
        parts.append("<h2>Tokens</h2>")
        parts.append(
            svg_chart(
                [
                    (
                        f"TTFT {k} ms",
                        [(o, (s.get("ttft") or {}).get(k)) for o, s in zip(offered, steps, strict=True)],
                    )
                    for k in ("p50", "p99")
                ],
                x_label=f"offered ({unit})",
                y_label="ms",
            )
        )
    if report.get("members"):
        parts.append("<h2>By member</h2>" + _members_html(report["members"]))
    parts.append("<h2>Steps</h2>" + _steps_html(steps, bool(report.get("stream"))))
    parts.append("</body></html>")
    return "\n".join(parts)


def _members_html(rows: Sequence[dict[str, Any]]) -> str:
    e = html.escape
    cols = ["member", "requests", "ok", "errors", "by status", "ok/s", "p50", "p90", "p99", "share",
            "weight's"]  # fmt: skip
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = [
            str(r["member"]), r["requests"], r["ok"], r["errors"],
            ", ".join(f"{k}: {v}" for k, v in (r.get("by_status") or {}).items()), r.get("throughput"),
            r.get("p50"), r.get("p90"), r.get("p99"), _pct(r.get("share")), _pct(r.get("expected_share")),
        ]  # fmt: skip
        tds = "".join(f"<td>{e(c if isinstance(c, str) else _num(c))}</td>" for c in cells)
        out.append(f"<tr>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _steps_html(steps: Sequence[dict[str, Any]], stream: bool) -> str:
    e = html.escape
    cols = ["step", "offered", "sent/s", "ok/s", "p50", "p90", "p99", "p99.9", "max", "errors", "by status",
            "replicas", "in flight"]  # fmt: skip
    if stream:
        cols += ["TTFT p50", "TTFT p99", "TPOT p50", "tok/s"]
    by_member = any(s.get("members") for s in steps)
    if by_member:
        cols.append("by member")
    cols.append("knee")
    rows = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for s in steps:
        cells = [
            s["index"] + 1, s["offered"], s["send_rate"], s["throughput"], _lat(s, "p50"), _lat(s, "p90"),
            _lat(s, "p99"), _lat(s, "p99.9"), _lat(s, "max_ms"), s["errors"],
            ", ".join(f"{k}: {v}" for k, v in (s.get("by_status") or {}).items()), s.get("replicas"),
            s.get("in_flight"),
        ]  # fmt: skip
        if stream:
            ttft, tpot = s.get("ttft") or {}, s.get("tpot") or {}
            cells += [ttft.get("p50"), ttft.get("p99"), tpot.get("p50"), s.get("tokens_per_s")]
        if by_member:
            cells.append(", ".join(f"{m['member']}: {m['requests']}" for m in s.get("members") or []))
        cells.append(s.get("knee") or "")
        cls = " class='knee'" if s.get("knee") else ""
        tds = "".join(f"<td>{e(c if isinstance(c, str) else _num(c))}</td>" for c in cells)
        rows.append(f"<tr{cls}>{tds}</tr>")
    rows.append("</table>")
    return "\n".join(rows)
