"""How the CLI shows things: rich tables for people, one-line JSON for scripts, plain error lines."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from openeas.kernel.routing import DEFAULT_BALANCER
from openeas.kernel.states import ReplicaPhase, ServiceStatus


def _width(stream: object) -> int | None:
    # A pipe has no width: rich would wrap at 80 columns; a table piped to grep or less reads better whole.
    isatty = getattr(stream, "isatty", None)
    return None if "COLUMNS" in os.environ or (isatty is not None and isatty()) else 200


# Console() resolves sys.stdout/sys.stderr at print time, so test runners that swap them still work.
out = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))

# How a replica phase or a service status is shown (colour); anything else is plain. Pending,
# Stopped and Failed are words of both enums, styled alike.
PHASE_STYLE: dict[str, str] = {
    ReplicaPhase.READY: "green",
    ReplicaPhase.WARMING: "cyan",
    ReplicaPhase.STARTING: "cyan",
    ReplicaPhase.FETCHING: "cyan",
    ReplicaPhase.PULLING: "cyan",
    ReplicaPhase.PENDING: "yellow",
    ReplicaPhase.DRAINING: "yellow",
    ReplicaPhase.STOPPED: "dim",
    ReplicaPhase.FAILED: "bold red",
    ServiceStatus.RUNNING: "green",
    ServiceStatus.UPDATING: "yellow",
    ServiceStatus.DELETING: "yellow",
    ServiceStatus.DEGRADED: "bold yellow",
}


def print_json(obj: Any) -> None:
    """One JSON document on one line (``--json``): stable for ``jq`` and ``json.loads``."""
    out.file.write(json.dumps(obj) + "\n")
    out.file.flush()


def styled(word: Any) -> Text:
    s = "-" if word is None else str(word)
    return Text(s, style=PHASE_STYLE.get(s, ""))


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def age(value: Any, now: datetime | None = None) -> str:
    """``"42s"``, ``"5m"``, ``"3h"``, ``"2d"``: how long ago ``value`` (ISO 8601) was."""
    t = parse_time(value)
    if t is None:
        return "-"
    secs = max(0, int(((now or datetime.now(UTC)) - t).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def clock(value: Any) -> str:
    """Local wall-clock time of an ISO 8601 instant, ``YYYY-MM-DD HH:MM:SS``."""
    t = parse_time(value)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def services_table(services: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "STATUS", "VERSION", "READY", "AGE", "ENDPOINT"):
        table.add_column(col, no_wrap=col != "ENDPOINT")
    for s in services:
        table.add_row(
            str(s.get("name", "")),
            styled(s.get("status")),
            str(s.get("version", "-")),
            f"{s.get('ready_replicas', 0)}/{s.get('desired_replicas', 0)}",
            age(s.get("created_at")),
            str(s.get("endpoint", "")),
        )
    return table


def gateways_table(gateways: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "URL", "HOST", "PID", "APPLIED", "LAG", "HEARTBEAT", "LIVE"):
        table.add_column(col, no_wrap=True)
    for g in gateways:
        table.add_row(
            str(g.get("id", "")),
            str(g.get("url", "")),
            str(g.get("host", "")),
            str(g.get("pid", "")),
            str(g.get("applied_version", "-")),
            str(g.get("lag", "-")),
            f"{g.get('heartbeat_age_s', 0):.1f}s ago",
            "yes" if g.get("live") else "no",
        )
    return table


def summary_grid(d: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    versions = d.get("versions") or []
    rows: list[tuple[str, Any]] = [
        ("Name", d.get("name", "")),
        ("Status", styled(d.get("status"))),
        ("Version", d.get("version", "-")),
        (
            "Replicas",
            f"{d.get('ready_replicas', 0)} ready / {d.get('desired_replicas', 0)} desired"
            f" / {d.get('total_replicas', 0)} total",
        ),
        ("Endpoint", d.get("endpoint", "")),
        ("Runtime", _runtime_text(d.get("runtime"))),
        ("Created", f"{clock(d.get('created_at'))} ({age(d.get('created_at'))} ago)"),
        ("Updated", f"{clock(d.get('updated_at'))} ({age(d.get('updated_at'))} ago)"),
    ]
    if versions:
        rows.append(("Versions", ", ".join(str(v.get("version")) for v in versions)))
    metadata = (d.get("spec") or {}).get("metadata") or {}
    if metadata:  # how the gateway picks a replica (docs/balancers.md)
        rows.append(("Balancer", metadata.get("balancer") or DEFAULT_BALANCER))
    if d.get("idle"):  # the idle-spend alarm (docs/cost.md)
        rows.append(("Idle spend", Text(str(d["idle"].get("message", "")), style="yellow")))
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _runtime_text(rt: Any) -> str:
    if not isinstance(rt, dict):
        return "-"
    text = f"{rt.get('name') or 'cannot run'}: {rt.get('reason', '')}"
    return text + "".join(f"\nwarning: {w}" for w in rt.get("warnings") or [])


def dry_run_text(plan: dict[str, Any]) -> str:
    """``deploy --dry-run``: what would happen, in a few lines."""
    lines = [
        f"spec is valid: would {plan.get('action')} service {plan.get('name')} "
        f"(version {plan.get('version')}, {plan.get('replicas')} replicas)",
        f"runtime: {_runtime_text(plan.get('runtime'))}",
    ]
    launch = plan.get("launch") or {}
    if launch:
        lines.append(f"launch: {launch.get('how', '')}")
        for m in launch.get("mounts") or []:
            lines.append(f"  mount {m['mount_path']} <- {m['source']} ({m['mode']})")
        for c in launch.get("containers") or []:
            lines += _container_plan_lines(c)
    unused = plan.get("accepted_unused") or []
    if unused:
        lines.append(f"accepted, not used by this runtime: {', '.join(unused)}")
    lines += [f"warning: {w}" for w in plan.get("warnings") or []]
    lines.append(f"endpoint: {plan.get('endpoint')}")
    cost = plan.get("cost") or {}
    if cost.get("monthly_total") is not None:  # api/cost.py: the baseline estimate
        total, cur = cost["monthly_total"], cost.get("currency", "")
        lines.append(f"monthly estimate: {total:,.2f} {cur} ({cost['lines'][0]['arithmetic']})")
    elif cost:
        lines.append(f"monthly estimate: none ({cost.get('error') or cost.get('pricing', {}).get('how')})")
    return "\n".join(lines)


def _container_plan_lines(c: dict[str, Any]) -> list[str]:
    """One container of the dry-run's launch plan: what runs, the engine command, the env."""
    image = f" ({c['image']})" if c.get("image") else ""
    out = [f"  containers[{c['container']}]{image}, port {c['port']}:"]
    out.append(f"    runs: {shlex.join(c['runs'])}")
    if c.get("engine_command"):
        out.append(f"    engine: {shlex.join(c['engine_command'])}")
    for name, value in (c.get("env") or {}).items():
        out.append(f"    env {name}={value}")
    return out


def replicas_table(replicas: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for col in (
        "REPLICA",
        "VER",
        "PHASE",
        "PORT",
        "PID",
        "RESTARTS",
        "PULL s",
        "FETCH s",
        "START s",
        "WARM s",
        "TOTAL s",
    ):
        table.add_column(col, no_wrap=True, justify="right" if col.endswith(" s") else "left")
    table.add_column("MESSAGE")
    for r in replicas:
        cs = r.get("cold_start") or {}
        table.add_row(
            str(r.get("id", "")),
            str(r.get("version", "-")),
            styled(r.get("phase")),
            str(r.get("port") or "-"),
            str(r.get("pid") or "-"),
            str(r.get("restart_count", 0)),
            seconds(cs.get("pull_s")),
            seconds(cs.get("fetch_s")),
            seconds(cs.get("start_s")),
            seconds(cs.get("warm_s")),
            seconds(cs.get("total_s")),
            Text(str(r.get("message") or (r.get("startup") or {}).get("text") or "")),
        )
    return table


def versions_table(versions: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("VERSION", "CREATED", "CURRENT"):
        table.add_column(col, no_wrap=True)
    for v in versions:
        table.add_row(str(v.get("version")), clock(v.get("created_at")), "*" if v.get("current") else "")
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("TIME", "TYPE", "REASON", "REPLICA"):
        table.add_column(col, no_wrap=True)
    table.add_column("MESSAGE")
    for e in events:
        kind = str(e.get("type", ""))
        table.add_row(
            clock(e.get("time")),
            Text(kind, style="yellow" if kind == "Warning" else ""),
            str(e.get("reason", "")),
            str(e.get("replica") or "-"),
            Text(str(e.get("message", ""))),
        )
    return table


def progress_line(d: dict[str, Any], ready: int, wanted: int) -> str:
    """Spinner text while waiting: ``demo Updating · 1/2 ready · demo-ab12 Ready, demo-cd34 Fetching``."""
    phases = ", ".join(
        f"{r.get('id')} {r.get('phase')}"
        + (f" (v{r.get('version')})" if r.get("version") != d.get("version") else "")
        for r in d.get("replicas") or []
    )
    line = f"{d.get('name')} {d.get('status', '')} · {ready}/{wanted} ready"
    return line + (f" · {phases}" if phases else "")


def cold_start_line(d: dict[str, Any]) -> str | None:
    """The slowest current-version start: ``cold start 12.3s (fetch 1.0 · start 10.1 · warm 1.2)``."""
    starts = [
        r.get("cold_start") or {}
        for r in d.get("replicas") or []
        if r.get("version") == d.get("version") and r.get("phase") == "Ready"
    ]
    starts = [c for c in starts if isinstance(c.get("total_s"), int | float)]
    if not starts:
        return None
    c = max(starts, key=lambda c: c["total_s"])
    # pull and prepare only when the start had them (an image pulled, requirements installed)
    kinds = [k for k in ("pull", "fetch", "prepare", "start", "warm")
             if k in ("fetch", "start", "warm") or isinstance(c.get(k + "_s"), int | float)]  # fmt: skip
    parts = " · ".join(f"{k} {seconds(c.get(k + '_s'))}" for k in kinds)
    return f"cold start {c['total_s']:.1f}s ({parts})"


def autoscaling_grid(a: dict[str, Any], desired: Any = None) -> Table:
    """The autoscaler at a glance: each metric vs its target, desired vs Ready, bounds and rule,
    the last decision's reason (also when it changed nothing) and the last change."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    p = a.get("policy") or {}
    d = a.get("decision") or {}
    b = a.get("bounds") or {}
    rows: list[tuple[str, str]] = []
    for m in a.get("metrics") or []:
        value = "no data" if m.get("value") is None else f"{m['value']:.2f}"
        rec = m.get("recommendation")
        rows.append(
            (
                f"Metric {m.get('metric')}",
                f"{value} / target {m.get('target'):g} per replica"
                + (f" → {rec} replicas" if rec is not None else "")
                + f"  ({m.get('unit', '')})"
                + (f"  read as {m['reading']}" if m.get("reading") else ""),
            )
        )
    if not a.get("metrics"):
        for m in p.get("metrics") or []:
            rows.append(
                (f"Metric {m.get('key')}", f"target {m.get('target'):g} per replica (no decision yet)")
            )
    want = d.get("desired_replicas", desired)
    rows.append(
        ("Replicas", f"{want if want is not None else '-'} desired / {a.get('ready_replicas', 0)} ready")
    )
    lo, hi = b.get("min_replicas", p.get("min_replicas")), b.get("max_replicas", p.get("max_replicas"))
    bounds = f"{lo}..{hi}"
    if b.get("rule"):
        bounds += f" (rule {b['rule']} since {clock(b.get('rule_since'))})"
    if b.get("prescale"):
        bounds += f"; pre-scaling for {b['prescale']} at {clock(b.get('prescale_at'))}"
    rows.append(("Bounds", bounds))
    windows = f"up {p.get('scale_up_window_s', 0):g}s · down {p.get('scale_down_window_s', 0):g}s"
    windows += f" · metric window {p.get('metric_window_s', 0):g}s · tolerance {p.get('tolerance', 0):g}"
    rows.append(("Windows", windows))
    nxt = a.get("next_rule")
    if nxt:
        rows.append(("Next rule", f"{nxt.get('name')} at {clock(nxt.get('at'))}"))
    if d:
        flag = "" if d.get("valid", True) else " [no data]"
        rows.append(("Last decision", f"{clock(d.get('time'))}{flag}: {d.get('reason', '')}"))
    last = a.get("last_change")
    if last:
        rows.append(("Last change", f"{clock(last.get('time'))}: {last.get('message', '')}"))
    for key, value in rows:
        grid.add_row(key, Text(value))
    return grid
