"""The console's routes under ``/console`` on the control plane's app: login, the pages, their
forms (each checked against its session's CSRF token) and the live streams (Server-Sent Events).
Actions go through the API in process (console/apicall.py) with the admin token."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from openeas.api.control import ControlPlane
from openeas.console import group_pages, pages, queues_page, service_parts, stress_page
from openeas.console.apicall import Answer, call
from openeas.console.costcol import monthly_cost
from openeas.console.html import SECURITY_HEADERS, layout
from openeas.console.live import Live
from openeas.console.session import COOKIE, Session, Sessions, csrf_ok
from openeas.errors import NotFound, SpecError
from openeas.spec.load import parse_text

MAX_FORM_BYTES = 1024 * 1024
"""Largest form body the console reads (1 MiB: a pasted spec)."""

STREAM_KEEPALIVE_S = 15.0
"""Seconds between two comments on an idle live stream (keeps proxies from closing it)."""

GROUP_POLL_S = 1.0
"""Seconds between two looks at a group (its traffic and its rollout) for its page's live stream."""

_STATIC = {"console.js": "text/javascript"}  # the stylesheet is inlined in each page (html.py)


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/console/login", 303, headers=SECURITY_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}


@dataclass
class Console:
    """What every page's routes share: the app (its API is called in process), the control
    plane, the sessions, the live view and the clock."""

    app: FastAPI
    cp: ControlPlane
    sessions: Sessions
    live: Live
    clock: Callable[[], float]

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.clock())

    async def posted(self, request: Request) -> tuple[Session | None, dict[str, str], Response | None]:
        """The session and form of a POST; an error response when either is missing or forged."""
        s = self.session_of(request)
        if s is None:
            return None, {}, _to_login()
        form = await _form(request)
        if not csrf_ok(s, form.get("csrf")):
            msg = "csrf: the form's token is missing or not this session's; reload the page and try again"
            return s, form, _html(layout("Refused", f'<p role="alert">{msg}</p>'), 403)
        return s, form, None

    async def api(self, method: str, path: str, body: Any = None) -> Answer:
        """``method path`` on the API in process, with the admin token."""
        return await call(self.app, self.cp.admin_token, method, path, body)

    def stream(
        self, request: Request, fragment: Callable[[], Awaitable[Any]], poll_s: float | None = None
    ) -> Response:
        """A live stream (Server-Sent Events) of ``fragment``, sent again when it changes: looked at
        on each change of the live view, or every ``poll_s`` for what the live view does not
        follow (a stress test's steps, queues, batch jobs)."""
        if self.session_of(request) is None:
            return Response(status_code=401)
        live = self.live

        async def events() -> AsyncIterator[bytes]:
            last: str | None = None
            seen, sent = -1, time.monotonic()
            while not await request.is_disconnected():
                # changed_since returns at once once the live view is closed (the server stops)
                changed = await live.changed_since(seen, poll_s or STREAM_KEEPALIVE_S) or bool(poll_s)
                if live.closed.is_set():
                    return  # the server stops: the response ends, the browser's EventSource retries
                seen = live.version
                data = json.dumps(await fragment()) if changed or last is None else last
                if data != last:
                    last = data
                    yield f"data: {data}\n\n".encode()
                    sent = time.monotonic()
                elif not changed or time.monotonic() - sent >= STREAM_KEEPALIVE_S:
                    yield b": keepalive\n\n"
                    sent = time.monotonic()

        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _q(name: str) -> str:
    return urllib.parse.quote(name)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, 303, headers=SECURITY_HEADERS)


def add_console(app: FastAPI, cp: ControlPlane, clock: Callable[[], float] = time.time) -> Live:
    """Mount the console on ``app``; the Live view whose ``run`` the server starts."""
    live = Live(cp, clock=clock, cost=monthly_cost(cp))
    c = Console(app, cp, Sessions(cp.admin_token), live, clock)
    for add in (
        _login_routes,
        _services_routes,
        _service_routes,
        _service_live_routes,
        _deploy_routes,
        _group_routes,
        stress_page.add,
        queues_page.add,
    ):
        add(c)
    return live


def _login_routes(c: Console) -> None:
    """Home, static files, login and logout."""
    app = c.app

    @app.get("/console", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/console/services", 303)

    @app.get("/console/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise NotFound(f"console file '{name}' does not exist")
        data = resources.files("openeas.console").joinpath("static", name).read_bytes()
        return Response(data, media_type=_STATIC[name], headers={"cache-control": "max-age=300"})

    @app.get("/console/login", include_in_schema=False)
    def login_form() -> Response:
        return _html(pages.login_page())

    @app.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        s = c.sessions.login((await _form(request)).get("token", "").strip(), c.clock())
        if s is None:
            return _html(pages.login_page("token: wrong admin token"), 401)
        r = _redirect("/console/services")
        r.set_cookie(COOKIE, s.id, httponly=True, samesite="strict", path="/console", max_age=12 * 3600)
        return r

    @app.post("/console/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        s, _, refused = await c.posted(request)
        if refused is not None:
            return refused
        c.sessions.logout(s.id if s else None)
        r = _to_login()
        r.delete_cookie(COOKIE, path="/console")
        return r


def _services_routes(c: Console) -> None:
    """The Services page and its live stream."""
    live = c.live

    @c.app.get("/console/services", include_in_schema=False)
    async def services(request: Request) -> Response:
        s = c.session_of(request)
        if s is None:
            return _to_login()
        snap = live.snapshot if live.version else await asyncio.to_thread(live.rows, c.clock())
        return _html(pages.services_page(snap, s.csrf))

    @c.app.get("/console/live", include_in_schema=False)
    def live_services(request: Request) -> Response:
        async def frag() -> dict[str, str]:
            return pages.services_fragment(live.snapshot)

        return c.stream(request, frag)


def _pick(request: Request) -> tuple[int, int] | None:
    """The two versions a Service page's compare form asked for (``diff_from``, ``diff_to``)."""
    a, b = request.query_params.get("diff_from", ""), request.query_params.get("diff_to", "")
    return (int(a), int(b)) if a.isdigit() and b.isdigit() else None


def _service_routes(c: Console) -> None:
    """A service's page (its versions diff and the replica whose log it shows are read from the
    query), reveal its token, its actions."""
    app, live = c.app, c.live

    async def render(
        s: Session, name: str, request: Request, token: str | None = None, errors: list[str] | None = None
    ) -> Response:
        got = await c.api("GET", f"/api/v1/services/{_q(name)}")
        if not got.ok:
            return _html(layout("Not found", pages.errors_list(got.errors())), got.status)
        ev = await c.api("GET", f"/api/v1/services/{_q(name)}/events?limit=50")
        events = ev.body.get("events", []) if ev.ok else []
        errors = list(errors or [])
        pick, diff = _pick(request), None
        if pick is not None:
            d = await c.api("GET", f"/api/v1/services/{_q(name)}/versions/diff?from={pick[0]}&to={pick[1]}")
            diff = d.body["diff"] if d.ok else None
            errors += d.errors()
        ids = [str(r["id"]) for r in got.body["replicas"]]
        asked = request.query_params.get("replica")
        replica = asked if asked in ids else (ids[0] if ids else None)
        extras = pages.ServiceExtras(token, pick, diff, replica, await _log(c, name, replica))
        history = live.history_of(name)
        page = pages.service_page(got.body, events, history, s.csrf, extras=extras, errors=errors)
        return _html(page, 400 if errors else 200)

    @app.get("/console/services/{name}", include_in_schema=False)
    async def service(request: Request, name: str) -> Response:
        s = c.session_of(request)
        return _to_login() if s is None else await render(s, name, request)

    @app.post("/console/services/{name}/token", include_in_schema=False)
    async def reveal(request: Request, name: str) -> Response:
        s, _, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        got = await c.api("GET", f"/api/v1/services/{_q(name)}/call-info")
        return await render(s, name, request, token=got.body.get("token") if got.ok else None)

    @app.post("/console/services/{name}/action", include_in_schema=False)
    async def act(request: Request, name: str) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        errors = action_errors(form)
        if not errors:
            method, path, body = _ACTIONS[form["action"]](form)
            got = await c.api(method, f"/api/v1/services/{_q(name)}{path}", body)
            errors = got.errors()
            if got.ok and form["action"] == "delete":
                return _redirect("/console/services")
        if errors:
            return await render(s, name, request, errors=errors)
        return _redirect(f"/console/services/{_q(name)}")


async def _log(c: Console, name: str, replica: str | None) -> str | None:
    """The last lines of ``replica``'s log (None: no such replica now)."""
    if replica is None:
        return None
    path = f"/api/v1/services/{_q(name)}/logs?replica={_q(replica)}&tail={service_parts.LOG_LINES}"
    got = await c.api("GET", path)
    return str(got.body["logs"][0]["text"]) if got.ok and got.body.get("logs") else None


def _service_live_routes(c: Console) -> None:
    """A service's live streams: its status, replicas and charts; the tail of one replica's log."""
    live = c.live

    # Under /services/: a one-segment /console/live/{name} took /console/live/async for a service's.
    @c.app.get("/console/live/services/{name}", include_in_schema=False)
    def live_service(request: Request, name: str) -> Response:
        async def frag() -> dict[str, str]:
            got = await c.api("GET", f"/api/v1/services/{_q(name)}")
            if not got.ok:
                return {"status": "gone"}
            return {**pages.replicas_fragment(got.body), "charts": pages.charts_html(live.history_of(name))}

        return c.stream(request, frag)

    @c.app.get("/console/live/services/{name}/log", include_in_schema=False)
    def live_log(request: Request, name: str, replica: str) -> Response:
        async def frag() -> dict[str, str]:
            return service_parts.log_fragment(await _log(c, name, replica))

        return c.stream(request, frag, service_parts.LOG_POLL_S)


def _deploy_routes(c: Console) -> None:
    """The Deploy page: check (dry run), then deploy."""

    @c.app.get("/console/deploy", include_in_schema=False)
    def deploy_form(request: Request) -> Response:
        s = c.session_of(request)
        return _to_login() if s is None else _html(pages.deploy_page(s.csrf))

    @c.app.post("/console/deploy", include_in_schema=False)
    async def deploy(request: Request) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        text = form.get("spec", "")
        try:
            data: Any = parse_text(text)
        except SpecError as exc:
            return _html(pages.deploy_page(s.csrf, text, exc.errors), 400)
        plan = await c.api("POST", "/api/v1/dry-run", data)
        if not plan.ok or form.get("op") != "deploy":
            return _html(
                pages.deploy_page(s.csrf, text, plan.errors(), plan.body if plan.ok else None),
                plan.status if not plan.ok else 200,
            )
        made = await c.api("POST", "/api/v1/services", data)
        if not made.ok:
            return _html(pages.deploy_page(s.csrf, text, made.errors(), plan.body), made.status)
        return _redirect(f"/console/services/{_q(made.body['name'])}")


def _group_routes(c: Console) -> None:
    """A group's page: its weight sliders, its staged rollout and its live stream."""

    async def rollout(name: str) -> Any:
        got = await c.api("GET", f"/api/v1/groups/{_q(name)}/rollout")
        return got.body if got.ok else None

    async def render(s: Session, name: str, errors: list[str] | None = None) -> Response:
        got = await c.api("GET", f"/api/v1/groups/{_q(name)}")
        if not got.ok:
            return _html(layout("Not found", pages.errors_list(got.errors())), got.status)
        page = group_pages.group_page(got.body, s.csrf, errors or [], await rollout(name))
        return _html(page, 400 if errors else 200)

    @c.app.get("/console/groups/{name}", include_in_schema=False)
    async def group(request: Request, name: str) -> Response:
        s = c.session_of(request)
        return _to_login() if s is None else await render(s, name)

    @c.app.post("/console/groups/{name}/weights", include_in_schema=False)
    async def weights(request: Request, name: str) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        path = f"/api/v1/groups/{_q(name)}"
        got = await c.api("GET", path + "?stats=false")
        members = [m["service"] for m in got.body["members"]] if got.ok else []
        body, errors = group_pages.weights_body(form, members)
        if not errors:  # the API answers once the gateway routes by the new weights
            errors = (await c.api("POST", path + "/weights", body)).errors()
        if errors:
            return await render(s, name, errors)
        return _redirect(f"/console/groups/{_q(name)}")

    @c.app.post("/console/groups/{name}/rollout/{what}", include_in_schema=False)
    async def rollout_action(request: Request, name: str, what: str) -> Response:
        s, form, refused = await c.posted(request)
        if refused is not None or s is None:
            return refused or _to_login()
        errors = group_pages.rollout_errors(what, form)
        if not errors:
            errors = (await c.api("POST", f"/api/v1/groups/{_q(name)}/rollout/{what}")).errors()
        return await render(s, name, errors) if errors else _redirect(f"/console/groups/{_q(name)}")

    @c.app.get("/console/live/groups/{name}", include_in_schema=False)
    def live_group(request: Request, name: str) -> Response:
        s = c.session_of(request)

        async def frag() -> dict[str, str]:
            # both at once: the rollout's look must not delay the traffic counts a slider moves
            got, ro = await asyncio.gather(c.api("GET", f"/api/v1/groups/{_q(name)}"), rollout(name))
            if not got.ok:
                return {"stats_note": "group gone"}
            section = group_pages.rollout_fragment(name, ro, s.csrf if s else "")
            return {**group_pages.stats_fragment(got.body), **section}

        # Looked at every second too: a rollout's hold and its last look move without the live view.
        return c.stream(request, frag, GROUP_POLL_S)


_ACTIONS: dict[str, Callable[[dict[str, str]], tuple[str, str, Any]]] = {
    "scale": lambda f: ("POST", "/scale", {"replicas": int(f["replicas"])}),
    "start": lambda f: ("POST", "/start", None),
    "stop": lambda f: ("POST", "/stop", None),
    "delete": lambda f: ("DELETE", "", None),
    "rollback": lambda f: ("POST", "/rollback", {"version": int(f["version"])}),
}
_CONFIRMED = {"stop", "delete", "rollback"}  # actions that hurt: the form's confirm box must be ticked


def action_errors(form: dict[str, str]) -> list[str]:
    """Every problem of an action form, one ``field: reason`` line each."""
    action = form.get("action", "")
    if action not in _ACTIONS:
        return [f"action: '{action}' is not one of {', '.join(sorted(_ACTIONS))}"]
    errors = []
    for field in {"scale": ["replicas"], "rollback": ["version"]}.get(action, []):
        if not form.get(field, "").strip().isdigit():
            errors.append(f"{field}: must be a whole number ≥ 0, got '{form.get(field, '')}'")
    if action in _CONFIRMED and form.get("confirm") != "yes":
        errors.append(f"confirm: tick the box to {action} the service")
    return errors
