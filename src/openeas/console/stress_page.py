"""The Stress page: launch a short test on a service or group (``POST
/api/v1/services/{name}/stress`` in process), watch offered against achieved load and latency
step by step (the live stream re-renders the run's report), read the saturation point and the
recommendation, and apply it (a new version with that ``autoscaling`` block, as ``openeas stress
--apply`` writes it)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from openeas.console.html import SECURITY_HEADERS, csrf_field, errors_list, esc, layout, table
from openeas.stress.apply import with_autoscaling
from openeas.stress.report import summary_lines

STEP_HEAD = ("Step", "Offered", "Sent/s", "Achieved ok/s", "p50 ms", "p99 ms", "Errors")
SHORT_TEST = {"step_s": "2", "duration_s": "20", "max_qps": "200"}
"""The form's defaults: a short test (seconds per step, the whole test's cap, the highest rate)."""
LIVE_POLL_S = 0.5
"""Seconds between two looks at a running test's report for its page's live stream."""


def _n(v: Any) -> str:
    return "—" if not isinstance(v, int | float) else f"{v:.1f}".removesuffix(".0")


def steps_html(steps: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for i, s in enumerate(steps, 1):
        lat = s.get("latency") or {}
        short = ' class="bad"' if (s.get("throughput") or 0) < 0.95 * (s.get("offered") or 0) else ""
        rows.append(
            f"<tr><td>{i}</td><td>{esc(_n(s.get('offered')))}</td><td>{esc(_n(s.get('send_rate')))}</td>"
            f"<td{short}>{esc(_n(s.get('throughput')))}</td><td>{esc(_n(lat.get('p50')))}</td>"
            f"<td>{esc(_n(lat.get('p99')))}</td><td>{esc(s.get('errors'))}</td></tr>"
        )
    return "".join(rows)


def report_fragment(report: Mapping[str, Any]) -> dict[str, str]:
    """The live parts of a run's page: its steps and its summary (saturation, recommendation)."""
    lines = summary_lines(dict(report)) if report.get("status") != "running" else ["running…"]
    return {
        "steps": steps_html(report.get("steps") or []),
        "summary": "".join(f"<li>{esc(x)}</li>" for x in lines),
    }


def launch_page(
    csrf: str, targets: Sequence[str], recent: Sequence[Mapping[str, Any]], errors: Sequence[str] = ()
) -> str:
    options = "".join(f'<option value="{esc(t)}">{esc(t)}</option>' for t in targets)
    fields = "".join(
        f'<label for="{k}">{esc(label)}</label>'
        f'<input id="{k}" name="{k}" type="number" min="0" step="any" value="{v}">'
        for k, label, v in (
            ("step_s", "Seconds per step", SHORT_TEST["step_s"]),
            ("duration_s", "Whole test, at most (s)", SHORT_TEST["duration_s"]),
            ("max_qps", "Highest rate (req/s)", SHORT_TEST["max_qps"]),
        )
    )
    runs = [
        f'<tr><td><a href="/console/stress/{esc(r.get("id"))}">{esc(r.get("id"))}</a></td>'
        f"<td>{esc(r.get('target'))}</td><td>{esc(r.get('status'))}</td></tr>"
        for r in recent
    ]
    body = (
        errors_list(errors)
        + '<form method="post" action="/console/stress" class="card">'
        + csrf_field(csrf)
        + '<label for="target">Service or group</label>'
        + f'<select id="target" name="target" required>{options}</select>'
        + fields
        + '<button type="submit">Start the test</button></form>'
        + "<h2>Recent tests</h2>"
        + table(("Test", "Target", "Status"), runs, tid="runs")
    )
    return layout("Stress", body, csrf=csrf)


def run_page(report: Mapping[str, Any], csrf: str, errors: Sequence[str] = ()) -> str:
    rid = str(report.get("id"))
    frag = report_fragment(report)
    apply = ""
    if report.get("recommendation") and not report.get("group"):
        apply = (
            f'<form method="post" action="/console/stress/{esc(rid)}/apply" class="action">{csrf_field(csrf)}'
            f'<label><input type="checkbox" name="confirm" value="yes" required> yes, write this autoscaling '
            f"into {esc(report.get('target'))} as a new version</label>"
            '<button type="submit">Apply the recommendation</button></form>'
        )
    target = esc(report.get("target"))
    body = (
        errors_list(errors)
        + f'<p>Target: <a href="/console/services/{target}">{target}</a>'
        + f" · status {esc(report.get('status'))}</p>"
        + f'<ul id="summary">{frag["summary"]}</ul>{apply}'
        + table(STEP_HEAD, [frag["steps"]], tid="steps", caption="Offered against achieved, step by step")
    )
    return layout(f"Stress test {rid}", body, csrf=csrf, live=f"/console/live/stress/{rid}")


def plan_body(form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The API's ``options`` from the form; every bad field named."""
    options: dict[str, Any] = {"mode": "auto"}
    errors = []
    for k in SHORT_TEST:
        raw = form.get(k, "").strip()
        try:
            options[k] = float(raw)
        except ValueError:
            errors.append(f"{k}: must be a number, got '{raw}'")
    return {"options": options}, errors


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, 303, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return _redirect("/console/login")


def add(c: Any) -> None:
    """The Stress pages' routes on ``c`` (console/routes.py's Console: app, api, session_of,
    posted, stream; passed in, not imported, so that routes.py imports this module alone)."""

    async def targets() -> list[str]:
        svcs = await c.api("GET", "/api/v1/services")
        grps = await c.api("GET", "/api/v1/groups")
        names = [s["name"] for s in (svcs.body.get("services", []) if svcs.ok else [])]
        return names + [g["name"] for g in (grps.body.get("groups", []) if grps.ok else [])]

    async def launch(s: Any, errors: Sequence[str] = ()) -> Response:
        recent = await c.api("GET", "/api/v1/stress?limit=20")
        page = launch_page(
            s.csrf, await targets(), recent.body.get("reports", []) if recent.ok else [], errors
        )
        return _html(page, 400 if errors else 200)

    @c.app.get("/console/stress", include_in_schema=False)
    async def stress(request: Request) -> Response:
        s = c.session_of(request)
        return _to_login() if s is None else await launch(s)

    @c.app.post("/console/stress", include_in_schema=False)
    async def start(request: Request) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        body, errors = plan_body(form)
        if not errors:
            got = await c.api(
                "POST", f"/api/v1/services/{urllib.parse.quote(form.get('target', ''))}/stress", body
            )
            if got.ok:
                return _redirect(f"/console/stress/{urllib.parse.quote(got.body['id'])}")
            errors = got.errors()
        return await launch(s, errors)

    @c.app.get("/console/stress/{rid}", include_in_schema=False)
    async def run(request: Request, rid: str) -> Response:
        s = c.session_of(request)
        if s is None:
            return _to_login()
        got = await c.api("GET", f"/api/v1/stress/{urllib.parse.quote(rid)}")
        if not got.ok:
            return _html(layout("Not found", errors_list(got.errors())), got.status)
        return _html(run_page(got.body, s.csrf))

    @c.app.post("/console/stress/{rid}/apply", include_in_schema=False)
    async def apply(request: Request, rid: str) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        report = (await c.api("GET", f"/api/v1/stress/{urllib.parse.quote(rid)}")).body or {}
        rec, name = report.get("recommendation"), str(report.get("target", ""))
        errors = [] if form.get("confirm") == "yes" else ["confirm: tick the box to apply the recommendation"]
        if not isinstance(rec, dict):
            errors.append(f"recommendation: test {rid} has none to apply")
        if not errors and isinstance(rec, dict):
            path = f"/api/v1/services/{urllib.parse.quote(name)}"
            detail = await c.api("GET", path)
            auto = {k: rec[k] for k in ("metric", "target", "min_replicas", "max_replicas")}
            spec = with_autoscaling(detail.body["spec"], auto, detail.body.get("desired_replicas"))
            errors = (await c.api("PUT", path, spec)).errors() if detail.ok else detail.errors()
        if errors:
            return _html(run_page(report, s.csrf, errors), 400)
        return _redirect(f"/console/services/{urllib.parse.quote(name)}")

    @c.app.get("/console/live/stress/{rid}", include_in_schema=False)
    def live_run(request: Request, rid: str) -> Response:
        async def frag() -> dict[str, str]:
            got = await c.api("GET", f"/api/v1/stress/{urllib.parse.quote(rid)}")
            return report_fragment(got.body) if got.ok else {"summary": "<li>test gone</li>"}

        return c.stream(request, frag, LIVE_POLL_S)
