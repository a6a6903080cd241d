"""The Async and batch page: each asynchronous service's queue (depth, in flight, results, the
oldest request's age, dead letters with their last error and a re-drive button) and every batch
job with its progress, cancel and resume. Batch actions go through the API in process; a queue's
attributes, dead letters and re-drive are the gateway's own queue calls (``?_attrs_``,
``?_dead_``, ``?_redrive_``, docs/async.md) with the service's token, as the EAS SDK makes them."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from openeas.console.html import SECURITY_HEADERS, csrf_field, errors_list, esc, layout, table

QUEUE_HEAD = ("Service", "Queued", "In flight", "Results", "Oldest (s)", "Dead letters")
DEAD_HEAD = ("Request", "Index", "Attempts", "Last error")
BATCH_HEAD = ("Job", "Service", "State", "Progress", "OK", "Failed", "Message", "Action")
DEAD_SHOWN = 20
"""Dead letters listed per service (the newest first as the gateway answers them)."""
LIVE_POLL_S = 1.0
"""Seconds between two looks at the queues and batch jobs for the page's live stream."""
QUEUE_TIMEOUT_S = 5.0
"""Seconds the page waits for the gateway's answer about one queue."""


def queue_rows(queues: Sequence[Mapping[str, Any]], csrf: str) -> str:
    """One row per asynchronous service (red: dead letters), then its dead letters and re-drive."""
    rows = []
    for q in queues:
        name, attrs, dead = str(q["name"]), q.get("attrs") or {}, q.get("dead") or []
        qname = esc(urllib.parse.quote(name))
        ndead = attrs.get("stream.deadLetters", len(dead))
        bad = ' class="bad"' if str(ndead) not in ("0", "") else ""
        cells = [attrs.get(k) for k in ("stream.queued", "stream.inFlight", "stream.results")]
        age = attrs.get("stream.oldestAgeSeconds")
        rows.append(
            f'<tr id="q-{esc(name)}"><td><a href="/console/services/{qname}">{esc(name)}</a></td>'
            + "".join(f"<td>{esc(v)}</td>" for v in cells)
            + f"<td>{esc(age)}</td><td{bad} data-field=dead>{esc(ndead)}</td></tr>"
        )
        if q.get("error"):
            rows.append(f'<tr><td colspan="6" class="bad">{esc(q["error"])}</td></tr>')
        if dead:
            letters = [
                f"<tr><td>{esc(d.get('requestId'))}</td><td>{esc(d.get('index'))}</td>"
                f"<td>{esc(d.get('attempts'))}</td><td>{esc(d.get('lastError'))}</td></tr>"
                for d in dead[:DEAD_SHOWN]
            ]
            redrive = (
                f'<form method="post" action="/console/async/{qname}/redrive" class="action">'
                f'{csrf_field(csrf)}<button type="submit">Re-drive the dead letters of {esc(name)}'
                "</button></form>"
            )
            rows.append(
                f'<tr><td colspan="6">{table(DEAD_HEAD, letters, caption=f"Dead letters of {name}")}'
                f"{redrive}</td></tr>"
            )
    return "".join(rows)


def _progress(job: Mapping[str, Any]) -> str:
    total, done = int(job.get("total_lines") or 0), int(job.get("done_lines") or 0)
    pct = 100 * done // total if total else 0
    label = f"{done} / {total} lines"
    return f'<progress max="100" value="{pct}" aria-label="{esc(label)}"></progress> {esc(label)}'


def batch_rows(jobs: Sequence[Mapping[str, Any]], csrf: str) -> str:
    rows = []
    for j in jobs:
        jid, state = str(j.get("id")), str(j.get("state"))
        action = {"Running": "cancel", "Cancelled": "resume", "Failed": "resume"}.get(state)
        form = ""
        if action:
            form = (
                f'<form method="post" action="/console/batch/{esc(urllib.parse.quote(jid))}/{action}" '
                f'class="inline">{csrf_field(csrf)}'
                f'<button type="submit">{action.capitalize()}</button></form>'
            )
        bad = ' class="bad"' if state == "Failed" or j.get("failed_lines") else ""
        rows.append(
            f'<tr id="job-{esc(jid)}"><td>{esc(jid)}</td><td>{esc(j.get("service"))}</td>'
            f"<td data-field=state{bad}>{esc(state)}</td><td data-field=progress>{_progress(j)}</td>"
            f"<td>{esc(j.get('ok_lines'))}</td><td>{esc(j.get('failed_lines'))}</td>"
            f"<td>{esc(j.get('message'))}</td><td>{form}</td></tr>"
        )
    return "".join(rows)


Rows = Sequence[Mapping[str, Any]]


def fragment(queues: Rows, jobs: Rows, csrf: str) -> dict[str, str]:
    """The page's live parts (tbody contents, swapped in by console.js)."""
    return {"queues": queue_rows(queues, csrf), "jobs": batch_rows(jobs, csrf)}


def async_page(
    queues: Rows, jobs: Rows, csrf: str, errors: Sequence[str] = ()
) -> str:
    frag = fragment(queues, jobs, csrf)
    body = (
        errors_list(errors)
        + "<h2>Queues</h2>"
        + table(QUEUE_HEAD, [frag["queues"]], tid="queues", caption="Asynchronous services' queues")
        + "<h2>Batch jobs</h2>"
        + table(BATCH_HEAD, [frag["jobs"]], tid="jobs", caption="Batch jobs, newest first")
    )
    return layout("Async and batch", body, csrf=csrf, live="/console/live/async")


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, 303, headers=SECURITY_HEADERS)


async def _gateway(
    session: aiohttp.ClientSession, method: str, info: Mapping[str, Any], params: dict[str, str]
) -> Any:
    """One queue call on the gateway with the service's token; raises on a non-2xx answer."""
    timeout = aiohttp.ClientTimeout(total=QUEUE_TIMEOUT_S)
    headers = {"Authorization": str(info["token"])}
    url = str(info["endpoint"])
    async with session.request(method, url, params=params, headers=headers, timeout=timeout) as r:
        if r.status >= 300:
            raise RuntimeError(f"the gateway answered {r.status}: {(await r.text())[:200]}")
        return await r.json(content_type=None)


def add(c: Any) -> None:
    """The Async and batch page's routes on ``c`` (console/routes.py's Console)."""

    async def call_info(name: str) -> Mapping[str, Any] | None:
        got = await c.api("GET", f"/api/v1/services/{urllib.parse.quote(name)}/call-info")
        return got.body if got.ok else None

    async def queues() -> list[dict[str, Any]]:
        # One list call; call-info and the queue's two reads for the async services only (the
        # list says each service's mode: no detail call per service on each render).
        svcs = await c.api("GET", "/api/v1/services")
        out = []
        async with aiohttp.ClientSession() as session:
            for s in svcs.body.get("services", []) if svcs.ok else []:
                info = await call_info(s["name"]) if s.get("mode") == "async" else None
                if info is None:
                    continue
                q: dict[str, Any] = {"name": s["name"]}
                try:
                    q["attrs"] = await _gateway(session, "GET", info, {"_attrs_": "true"})
                    q["dead"] = await _gateway(session, "GET", info, {"_dead_": "true"})
                except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                    q["error"] = f"queue: {exc or type(exc).__name__}"
                out.append(q)
        return out

    async def jobs() -> list[dict[str, Any]]:
        got = await c.api("GET", "/api/v1/batch")
        return list(got.body) if got.ok and isinstance(got.body, list) else []

    async def render(s: Any, errors: Sequence[str] = ()) -> Response:
        return _html(async_page(await queues(), await jobs(), s.csrf, errors), 400 if errors else 200)

    @c.app.get("/console/async", include_in_schema=False)
    async def page(request: Request) -> Response:
        s = c.session_of(request)
        return _redirect("/console/login") if s is None else await render(s)

    @c.app.post("/console/batch/{jid}/{action}", include_in_schema=False)
    async def batch_action(request: Request, jid: str, action: str) -> Response:
        s, _, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _redirect("/console/login")
        if action not in ("cancel", "resume"):
            return await render(s, [f"action: '{action}' is not one of cancel, resume"])
        got = await c.api("POST", f"/api/v1/batch/{urllib.parse.quote(jid)}/{action}")
        return await render(s, got.errors()) if not got.ok else _redirect("/console/async")

    @c.app.post("/console/async/{name}/redrive", include_in_schema=False)
    async def redrive(request: Request, name: str) -> Response:
        s, _, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _redirect("/console/login")
        info = await call_info(name)
        errors = [] if info else [f"service: '{name}' does not exist"]
        if info:
            try:
                async with aiohttp.ClientSession() as session:
                    await _gateway(session, "POST", info, {"_redrive_": "true"})
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                errors = [f"redrive: {exc or type(exc).__name__}"]
        return await render(s, errors) if errors else _redirect("/console/async")

    @c.app.get("/console/live/async", include_in_schema=False)
    def live(request: Request) -> Response:
        s = c.session_of(request)

        async def frag() -> dict[str, str]:
            return fragment(await queues(), await jobs(), s.csrf if s else "")

        return c.stream(request, frag, LIVE_POLL_S)
