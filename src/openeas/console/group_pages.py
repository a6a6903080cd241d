"""The Groups page: a group's members with a weight slider and a mirror slider each (one form that
posts them all through the API's weights call, which returns once the gateway routes by them),
each member's live and mirrored traffic (requests, success, p99) as the gateway counts it, live,
and its staged rollout's progress with pause, resume and abort (abort behind a "yes, …" box)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from openeas.console.html import csrf_field, errors_list, esc, layout, table

MAX_WEIGHT = 1000
"""A member's weight is 0..1000 (relative), as the API takes it."""

MEMBER_HEAD = ("Member", "Status", "Ready", "Weight (0..1000)", "Share", "Mirror %")
STATS_HEAD = (
    "Member",
    "Requests",
    "Success",
    "p50 ms",
    "p99 ms",
    "Mirrored",
    "Mirror success",
    "Mirror p99 ms",
)


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}%"


def _ms(v: Any) -> str:
    return "—" if v is None else f"{float(v):.0f}"


def stats_fragment(detail: Mapping[str, Any]) -> dict[str, str]:
    """The live part of the Groups page: per member, live and mirrored traffic since the gateway started."""
    stats = detail.get("stats") or {}
    rows = []
    for m in detail["members"]:
        svc = str(m["service"])
        s = stats.get(svc) or {}
        live, mirror = s.get("live") or {}, s.get("mirror") or {}
        bad = ' class="bad"' if live.get("success") is not None and live["success"] < 0.99 else ""
        rows.append(
            f'<tr id="stat-{esc(svc)}"><td>{esc(svc)}</td>'
            f'<td data-field="requests">{esc(live.get("requests", 0))}</td>'
            f'<td data-field="success"{bad}>{esc(_pct(live.get("success")))}</td>'
            f'<td data-field="p50">{esc(_ms(live.get("p50_ms")))}</td>'
            f'<td data-field="p99">{esc(_ms(live.get("p99_ms")))}</td>'
            f'<td data-field="mirrored">{esc(mirror.get("requests", 0))}</td>'
            f"<td>{esc(_pct(mirror.get('success')))}</td><td>{esc(_ms(mirror.get('p99_ms')))}</td></tr>"
        )
    note = "" if detail.get("stats") is not None else "the gateway did not answer; traffic unknown"
    return {"member_stats": "".join(rows), "stats_note": esc(note)}


def _slider(field: str, svc: str, value: int, top: int, label: str) -> str:
    fid = f"{field}-{svc}"
    return (
        f'<label class="sr-only" for="{esc(fid)}">{esc(label)}</label>'
        f'<input type="range" id="{esc(fid)}" name="{esc(field)}.{esc(svc)}" min="0" max="{top}" '
        f'value="{esc(value)}" data-out="{esc(fid)}-out">'
        f'<output id="{esc(fid)}-out" for="{esc(fid)}">{esc(value)}</output>'
    )


def _member_row(m: Mapping[str, Any]) -> str:
    svc = str(m["service"])
    return (
        f'<tr id="member-{esc(svc)}"><td><a href="/console/services/{esc(svc)}">{esc(svc)}</a></td>'
        f"<td>{esc(m['status'])}</td><td>{esc(m['ready_replicas'])}</td>"
        f"<td>{_slider('w', svc, int(m['weight']), MAX_WEIGHT, f'weight of {svc}')}</td>"
        f"<td>{esc(m['share_percent'])}%</td>"
        f"<td>{_slider('m', svc, int(m['mirror_weight']), 100, f'mirror % of {svc}')}</td></tr>"
    )


ROLLOUT_ACTIONS = {"Running": ("pause", "abort"), "Paused": ("resume", "abort")}
"""What an operator may do to a rollout in each status (a finished one: nothing)."""
NO_ROLLOUT = "No staged rollout: `openeas rollout GROUP --to MEMBER` starts one."
CONFIRMED = {"abort"}
"""Rollout actions that need the form's "yes, …" box ticked."""


def _rollout_action(group: str, what: str, csrf: str) -> str:
    check = (
        f'<label><input type="checkbox" name="confirm" value="yes" required> yes, {esc(what)} the rollout '
        f"of {esc(group)} and restore its weights</label>"
        if what in CONFIRMED
        else ""
    )
    return (
        f'<form method="post" action="/console/groups/{esc(quote(group))}/rollout/{what}" class="action">'
        f'{csrf_field(csrf)}{check}<button type="submit">{esc(what.capitalize())}</button></form>'
    )


def rollout_fragment(group: str, rollout: Mapping[str, Any] | None, csrf: str) -> dict[str, str]:
    """The live part of the rollout section: status, step and percent, the last look's reason,
    and the actions the status allows; "no rollout" when the group never had one."""
    if rollout is None:
        return {"rollout": f'<p class="muted">{esc(NO_ROLLOUT)}</p>', "rollout_actions": ""}
    plan, state = rollout.get("plan") or {}, rollout.get("state") or {}
    status = str(state.get("status"))
    steps = plan.get("steps") or []
    pct = rollout.get("percent", 0)
    look = rollout.get("last_look") or {}
    bad = ' class="bad"' if status == "RolledBack" else ""
    items = [
        ("Status", f"<span data-field=rollout-status{bad}>{esc(status)}</span>"),
        ("Candidate", f"{esc(plan.get('candidate'))} (from {esc(plan.get('baseline'))})"),
        (
            "Step",
            f'<span data-field=rollout-step>{esc(rollout.get("step"))}</span> · {esc(pct)}% to the candidate '
            f'<progress max="100" value="{esc(pct)}" aria-label="{esc(pct)}% to the candidate"></progress>',
        ),
        ("Steps", esc(" → ".join(f"{p}%" for p in steps))),
        ("Hold per step", f"{esc(plan.get('hold_s'))} s"),
        ("Reason", esc(look.get("reason") or state.get("reason"))),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    actions = "".join(_rollout_action(group, what, csrf) for what in ROLLOUT_ACTIONS.get(status, ()))
    # Apart, so that the script replaces the forms only when the allowed actions change (a box
    # being ticked is not reset by the next look at the rollout).
    return {"rollout": f'<dl class="plan">{rows}</dl>', "rollout_actions": actions}


def rollout_errors(what: str, form: Mapping[str, str]) -> list[str]:
    """Every problem of a rollout action's form, one ``field: reason`` line each."""
    if what not in ("pause", "resume", "abort"):
        return [f"action: '{what}' is not one of abort, pause, resume"]
    if what in CONFIRMED and form.get("confirm") != "yes":
        return [f"confirm: tick the box to {what} the rollout"]
    return []


def group_page(
    detail: Mapping[str, Any], csrf: str, errors: Sequence[str] = (), rollout: Mapping[str, Any] | None = None
) -> str:
    name = str(detail["name"])
    rows = [_member_row(m) for m in detail["members"]]
    frag = stats_fragment(detail)
    ro = rollout_fragment(name, rollout, csrf)
    form = (
        f'<form method="post" action="/console/groups/{esc(name)}/weights" id="weights">{csrf_field(csrf)}'
        + table(MEMBER_HEAD, rows, tid="members", caption=f"Members ({detail['traffic_mode']} traffic)")
        + '<button type="submit">Apply weights</button></form>'
    )
    body = (
        errors_list(errors)
        + f"<p>Endpoint: <code>{esc(detail['endpoint'])}</code></p>"
        + form
        + table(STATS_HEAD, [frag["member_stats"]], tid="member-stats", caption="Traffic per member, live")
        + f'<p id="stats-note" class="bad">{frag["stats_note"]}</p>'
        + '<h2>Staged rollout</h2>'
        + '<section id="rollout" aria-label="Staged rollout">'
        + f'<div id="rollout-state">{ro["rollout"]}</div>'
        + f'<div id="rollout-actions" class="actions">{ro["rollout_actions"]}</div></section>'
    )
    return layout(f"Group {name}", body, csrf=csrf, live=f"/console/live/groups/{quote(name)}")


def weights_body(form: Mapping[str, str], members: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The weights call's body from the form's ``w.<member>`` and ``m.<member>`` fields; every
    field's problem, one ``field: reason`` line each (the API checks the ranges)."""
    weights: dict[str, int] = {}
    mirrors: dict[str, int] = {}
    errors = []
    for key, value in sorted(form.items()):
        kind, _, svc = key.partition(".")
        if kind not in ("w", "m") or not svc:
            continue
        field = "weights" if kind == "w" else "mirror_weights"
        if svc not in members:
            errors.append(f"{field}.{svc}: not a member of this group")
        elif not value.strip().isdigit():
            errors.append(f"{field}.{svc}: must be a whole number, got '{value}'")
        else:
            (weights if kind == "w" else mirrors)[svc] = int(value)
    return {"weights": weights, "mirror_weights": mirrors}, errors
