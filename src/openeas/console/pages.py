"""The console's pages, rendered on the server: every page reads fine without JavaScript; the
script only swaps in the fragments the live stream sends (rendered here too, by the same code)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openeas.console.html import csrf_field, errors_list, esc, layout, sparkline, table
from openeas.console.service_parts import log_html, snippets_html, versions_html

SERVICE_HEAD = (
    "Service",
    "Status",
    "Ready / desired",
    "QPS",
    "p50 ms",
    "p99 ms",
    "Success",
    "In flight",
    "Autoscaler",
    "Cost / month",
)
BAD_STATUS = {"Failed", "Degraded", "Error"}


def login_page(error: str | None = None) -> str:
    body = (
        errors_list([error] if error else []) + '<form method="post" action="/console/login" class="card">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '<button type="submit">Log in</button></form>'
        "<p>The admin token is in the server's <code>server.json</code>; it is asked once, then a "
        "session cookie keeps you logged in.</p>"
    )
    return layout("Log in", body)


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def service_row(r: Mapping[str, Any]) -> str:
    name = str(r["name"])
    ready, desired = r["ready"], r["desired"]
    short = ' class="bad"' if ready < desired else ""
    status = ' class="bad"' if r["status"] in BAD_STATUS else ""
    success = r["success"]
    pct = "{:.1f}%"
    succ = ' class="bad"' if success is not None and success < 0.99 else ""
    cells = [
        f'<td><a href="/console/services/{esc(name)}">{esc(name)}</a></td>',
        f'<td data-field="status"{status}>{esc(r["status"])}</td>',
        f'<td data-field="replicas"{short}>{esc(ready)} / {esc(desired)}</td>',
        f'<td data-field="qps">{esc(_num(r["qps"]))}</td>',
        f'<td data-field="p50">{esc(_num(r["p50_ms"], "{:.0f}"))}</td>',
        f'<td data-field="p99">{esc(_num(r["p99_ms"], "{:.0f}"))}</td>',
        f'<td data-field="success"{succ}>{esc(_num(None if success is None else success * 100, pct))}</td>',
        f'<td data-field="in_flight">{esc(r["in_flight"])}</td>',
        f'<td data-field="decision">{esc(r["decision"])}</td>',
        f'<td data-field="cost">{esc(r["cost"])}{idle_badge(r.get("idle"))}</td>',
    ]
    return f'<tr id="svc-{esc(name)}">{"".join(cells)}</tr>'


def idle_badge(idle: Mapping[str, Any] | None) -> str:
    """The idle-spend badge (api/idle.py): idle replicas and what they cost a month, the alarm's
    message as its title; nothing while the service is not idle."""
    if not idle:
        return ""
    cost = idle.get("monthly_cost")
    spend = "" if cost is None else f" · {cost:,.2f} {idle.get('currency', '')}".rstrip() + "/month"
    return (
        f' <span class="badge bad" data-field="idle" title="{esc(idle.get("message"))}">'
        f"idle {esc(idle.get('idle_replicas'))}{esc(spend)}</span>"
    )


def group_row(g: Mapping[str, Any]) -> str:
    members = ", ".join(f"{m['service']} ({m['weight']})" for m in g["members"]) or "no members"
    link = f'<a href="/console/groups/{esc(g["name"])}">{esc(g["name"])}</a>'
    return f'<tr id="grp-{esc(g["name"])}"><td>{link}</td><td>{esc(members)}</td></tr>'


def services_fragment(snap: Mapping[str, Any]) -> dict[str, str]:
    """The live parts of the Services page: its two tables' bodies."""
    return {
        "services": "".join(service_row(r) for r in snap["services"]),
        "groups": "".join(group_row(g) for g in snap["groups"]),
    }


def services_page(snap: Mapping[str, Any], csrf: str) -> str:
    frag = services_fragment(snap)
    empty = "" if snap["services"] else '<p>No service yet: <a href="/console/deploy">deploy one</a>.</p>'
    body = (
        empty
        + table(SERVICE_HEAD, [frag["services"]], tid="services", caption="Services, live")
        + table(("Group", "Members (weight)"), [frag["groups"]], tid="groups", caption="Groups")
    )
    return layout("Services", body, csrf=csrf, live="/console/live")


REPLICA_HEAD = ("Replica", "Phase", "Restarts", "Node", "Host:port", "Cold start", "Message")


COLD_SEGMENTS = ("pull_s", "fetch_s", "prepare_s", "start_s", "warm_s")
"""The cold-start spans drawn as the bar's segments, in order (``total_s`` is their span, not one)."""


def cold_bar(cold: Mapping[str, Any]) -> str:
    """A replica's cold start: one segment per measured span, sized by its share, then the total."""
    spans = [
        (k.removesuffix("_s"), float(v))
        for k in COLD_SEGMENTS
        if isinstance(v := cold.get(k), int | float) and v > 0
    ]
    measured = sum(v for _, v in spans)
    if not measured:
        return "—"
    total = cold.get("total_s")
    total = float(total) if isinstance(total, int | float) else measured
    parts = "".join(
        f'<span class="seg seg-{esc(k)}" data-share="{round(100 * v / measured)}" title="{esc(k)} {v:.2f} s">'
        f"{esc(k)} {v:.2f}s</span>"
        for k, v in spans
    )
    return f'<span class="coldbar">{parts}</span><span class="coldtotal">total {total:.2f}s</span>'


def replicas_fragment(detail: Mapping[str, Any]) -> dict[str, str]:
    rows = []
    for r in detail["replicas"]:
        bad = ' class="bad"' if r["phase"] in ("Failed", "Crashed") or r["restart_count"] else ""
        rows.append(
            f'<tr id="rep-{esc(r["id"])}"><td>{esc(r["id"])}</td>'
            f'<td data-field="phase">{esc(r["phase"])}</td>'
            f'<td data-field="restarts"{bad}>{esc(r["restart_count"])}</td>'
            f"<td>{esc(r.get('node') or 'this machine')}</td>"
            f"<td>{esc(r['host'])}:{esc(r['port'])}</td><td>{cold_bar(r['cold_start'])}</td>"
            f"<td>{esc(r['message'])}</td></tr>"
        )
    status = f"{detail['status']} · {detail['ready_replicas']} / {detail['desired_replicas']} ready"
    return {"replicas": "".join(rows), "status": esc(status)}


CHARTS = (("qps", "QPS"), ("p99_ms", "p99 ms"), ("in_flight", "In flight"), ("ready", "Ready replicas"))


def charts_html(history: Sequence[Mapping[str, Any]]) -> str:
    """The Service page's charts of its history (the live stream sends them again each tick)."""
    return "".join(
        f"<figure><figcaption>{esc(label)}</figcaption>"
        f"{sparkline([p[key] for p in history], label=f'{label} over the last minutes')}</figure>"
        for key, label in CHARTS
    )


def _action(name: str, csrf: str, action: str, label: str, extra: str = "", confirm: bool = False) -> str:
    check = (
        '<label><input type="checkbox" name="confirm" value="yes" required>'
        f" yes, {esc(action)} {esc(name)}</label>"
        if confirm
        else ""
    )
    return (
        f'<form method="post" action="/console/services/{esc(name)}/action" class="action">'
        f'{csrf_field(csrf)}<input type="hidden" name="action" value="{esc(action)}">{extra}{check}'
        f'<button type="submit">{esc(label)}</button></form>'
    )


@dataclass(frozen=True)
class ServiceExtras:
    """What a Service page shows beyond the service's own detail: the token once revealed, the
    two versions picked for a diff and their diff, the replica whose log is shown and its tail."""

    token: str | None = None
    pick: tuple[int, int] | None = None
    diff: Sequence[str] | None = None
    log_replica: str | None = None
    log_text: str | None = None


def service_page(
    detail: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    csrf: str,
    *,
    extras: ServiceExtras = ServiceExtras(),
    errors: Sequence[str] = (),
) -> str:
    name = str(detail["name"])
    frag = replicas_fragment(detail)
    ev_rows = [
        f"<tr><td>{esc(e['time'])}</td><td>{esc(e['type'])}</td><td>{esc(e['reason'])}</td>"
        f"<td>{esc(e['message'])}</td></tr>"
        for e in events
    ]
    reveal = (
        f'<p>Token: <code id="token">{esc(extras.token)}</code></p>'
        if extras.token
        else f'<form method="post" action="/console/services/{esc(name)}/token">{csrf_field(csrf)}'
        '<button type="submit">Reveal token</button></form>'
    )
    call = (
        f"<p>Endpoint: <code>{esc(detail['endpoint'])}</code></p>{reveal}"
        f'<div class="snippets">{snippets_html(name, str(detail["endpoint"]), extras.token)}</div>'
    )
    scale = _action(
        name,
        csrf,
        "scale",
        "Scale",
        '<label>Replicas <input name="replicas" type="number" min="0" '
        f'value="{esc(detail["desired_replicas"])}"></label>',
    )
    actions = (
        scale
        + _action(name, csrf, "start", "Start")
        + _action(name, csrf, "stop", "Stop", confirm=True)
        + _action(name, csrf, "delete", "Delete", confirm=True)
    )
    charts = charts_html(history)
    replica_ids = [str(r["id"]) for r in detail["replicas"]]
    quoted = urllib.parse.quote(name)
    live = [f"/console/live/services/{quoted}"]
    if extras.log_replica:
        live.append(f"/console/live/services/{quoted}/log?replica={urllib.parse.quote(extras.log_replica)}")
    body = (
        errors_list(errors)
        + f'<p id="status" class="status">{frag["status"]}</p>'
        + f'<section aria-label="Actions" class="actions">{actions}</section>'
        + f'<section class="charts" aria-label="Charts">{charts}</section>'
        + "<h2>Replicas</h2>"
        + table(REPLICA_HEAD, [frag["replicas"]], tid="replicas")
        + f"<h2>Call</h2>{call}"
        + '<h2 id="versions-head">Versions</h2>'
        + versions_html(name, detail["versions"], csrf, extras.pick, extras.diff)
        + "<h2>Log</h2>"
        + log_html(name, replica_ids, extras.log_replica, extras.log_text)
        + f"<h2>Spec as deployed</h2><pre>{esc(json.dumps(detail['spec'], indent=2))}</pre>"
        + "<h2>Events</h2>"
        + table(("Time", "Type", "Reason", "Message"), ev_rows, tid="events")
    )
    return layout(name, body, csrf=csrf, live=live)


def deploy_page(
    csrf: str, text: str = "", errors: Sequence[str] = (), plan: Mapping[str, Any] | None = None
) -> str:
    plan_html = ""
    if plan is not None:
        cost = plan.get("cost") or {}
        monthly = _monthly(cost)
        items = [
            ("Action", f"{plan.get('action')} version {plan.get('version')}"),
            ("Replicas", plan.get("replicas")),
            (
                "Runtime",
                f"{(plan.get('runtime') or {}).get('name')}: {(plan.get('runtime') or {}).get('reason')}",
            ),
            ("Endpoint", plan.get("endpoint")),
            ("Monthly estimate", monthly),
            ("Unused fields", ", ".join(plan.get("accepted_unused") or []) or None),
            ("Warnings", "; ".join(plan.get("warnings") or []) or None),
        ]
        rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
        plan_html = f'<h2>Plan</h2><dl id="plan">{rows}</dl>'
    body = (
        errors_list(errors)
        + '<form method="post" action="/console/deploy" class="card">'
        + csrf_field(csrf)
        + '<label for="spec">EAS service spec (JSON or YAML)</label>'
        + f'<textarea id="spec" name="spec" rows="18" required>{esc(text)}</textarea>'
        + '<button type="submit" name="op" value="check">Check (dry run)</button> '
        + '<button type="submit" name="op" value="deploy">Deploy</button></form>'
        + plan_html
    )
    return layout("Deploy", body, csrf=csrf)


def _monthly(cost: Any) -> str | None:
    """The dry run's monthly estimate as text: the total, or why there is none."""
    if not isinstance(cost, dict) or not cost:
        return None
    if "error" in cost:
        return f"no estimate: {cost['error']}"
    total = cost.get("monthly_total")
    if total is None:
        return "no estimate: " + ("; ".join(cost.get("notes") or []) or "the spec maps to no price")
    return f"{total:,.2f} {cost.get('currency', '')}".strip() + " per month"
