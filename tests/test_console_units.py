"""The console's pure parts without a browser: sessions and CSRF, the rates arithmetic (quantiles
interpolated within a histogram bucket), escaping, the action forms' checks, the cold-start bar,
the charts, and the documented defaults (docs/console.md)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openeas.api.app import create_app
from openeas.api.control import ControlPlane
from openeas.console import pages, queues_page, stress_page
from openeas.console.apicall import Answer
from openeas.console.costcol import COST_TTL_S, cost_text
from openeas.console.html import CSP, esc, sparkline
from openeas.console.live import HISTORY_POINTS, LIVE_INTERVAL_S
from openeas.console.rates import Reading, window
from openeas.console.routes import MAX_FORM_BYTES, STREAM_KEEPALIVE_S, Console, action_errors
from openeas.console.session import COOKIE, MAX_SESSIONS, SESSION_TTL_S, Session, Sessions, csrf_ok
from openeas.spec import parse_spec
from openeas.store import Store
from openeas.telemetry.answers import MemberSample
from openeas.telemetry.latency import SERVICE_LATENCY_BUCKETS_S

ADMIN = "admin-token-0123456789"


# ---- documented defaults (docs/console.md, "Defaults"): the literal numbers -------------------


@pytest.mark.parametrize(
    ("value", "documented"),
    [
        pytest.param(LIVE_INTERVAL_S, 0.5, id="refresh-0.5s"),
        pytest.param(HISTORY_POINTS, 1200, id="history-1200-points"),
        pytest.param(SESSION_TTL_S, 12 * 3600, id="session-12h"),
        pytest.param(MAX_FORM_BYTES, 1024 * 1024, id="form-limit-1MiB"),
        pytest.param(STREAM_KEEPALIVE_S, 15, id="keepalive-15s"),
        pytest.param(MAX_SESSIONS, 1000, id="sessions-1000"),
        pytest.param(COST_TTL_S, 60, id="cost-kept-60s"),
    ],
)
def test_console_defaults_are_the_documented_numbers(value: float, documented: float) -> None:
    assert value == documented


# ---- sessions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "logged_in"),
    [
        pytest.param(ADMIN, True, id="the-admin-token"),
        pytest.param("", False, id="empty"),
        pytest.param("admin-token", False, id="a-prefix"),
        pytest.param(ADMIN + "x", False, id="longer"),
        pytest.param(ADMIN.upper(), False, id="other-case"),
    ],
)
def test_login_takes_only_the_admin_token(token: str, logged_in: bool) -> None:
    assert (Sessions(ADMIN).login(token, now=0.0) is not None) is logged_in


@pytest.mark.parametrize(
    ("at", "alive"),
    [
        pytest.param(0.0, True, id="at-login"),
        pytest.param(SESSION_TTL_S - 0.001, True, id="just-before-12h"),
        pytest.param(SESSION_TTL_S, False, id="at-12h"),
        pytest.param(SESSION_TTL_S + 3600, False, id="after"),
    ],
)
def test_a_session_lives_12_hours_from_login(at: float, alive: bool) -> None:
    sessions = Sessions(ADMIN)
    s = sessions.login(ADMIN, now=100.0)
    assert s is not None
    assert (sessions.get(s.id, now=100.0 + at) is not None) is alive


@pytest.mark.parametrize(
    "cookie",
    [pytest.param(None, id="no-cookie"), pytest.param("", id="empty"), pytest.param("guess", id="unknown")],
)
def test_an_unknown_cookie_has_no_session(cookie: str | None) -> None:
    sessions = Sessions(ADMIN)
    sessions.login(ADMIN, now=0.0)
    assert sessions.get(cookie, now=1.0) is None


def test_logout_ends_only_that_session_and_ids_are_unguessable() -> None:
    sessions = Sessions(ADMIN)
    a, b = sessions.login(ADMIN, 0.0), sessions.login(ADMIN, 0.0)
    assert a is not None and b is not None
    assert len({a.id, a.csrf, b.id, b.csrf}) == 4 and min(len(a.id), len(a.csrf)) >= 40
    sessions.logout(a.id)
    assert sessions.get(a.id, 1.0) is None and sessions.get(b.id, 1.0) == b


def test_logging_in_beyond_the_cap_drops_the_oldest() -> None:
    sessions = Sessions(ADMIN)
    first = sessions.login(ADMIN, 0.0)
    assert first is not None
    for _ in range(MAX_SESSIONS):
        sessions.login(ADMIN, 0.0)
    assert sessions.get(first.id, 1.0) is None


SESSION = Session(id="sid", csrf="the-csrf-token", expires=10.0)


@pytest.mark.parametrize(
    ("session", "posted", "ok"),
    [
        pytest.param(SESSION, "the-csrf-token", True, id="its-token"),
        pytest.param(SESSION, None, False, id="missing"),
        pytest.param(SESSION, "", False, id="empty"),
        pytest.param(SESSION, "the-csrf-toke", False, id="a-prefix"),
        pytest.param(SESSION, "sid", False, id="the-session-id"),
        pytest.param(None, "the-csrf-token", False, id="no-session"),
        pytest.param(Session("other", "x", 10.0), "the-csrf-token", False, id="another-session's"),
    ],
)
def test_csrf_check(session: Session | None, posted: str | None, ok: bool) -> None:
    assert csrf_ok(session, posted) is ok


# ---- rates: requests per second, success, p50/p99 interpolated within the bucket --------------

BOUNDS = (0.1, 0.2, 0.5, math.inf)


def reading(t: float, codes: dict[str, int], buckets: tuple[int, ...], service: str = "svc") -> Reading:
    """The gateways' summed answers at ``t``: by code and by latency (non-cumulative, over BOUNDS)."""
    return Reading(t, {service: MemberSample(codes, buckets)})


ZERO = ({"200": 0}, (0, 0, 0, 0))


@pytest.mark.parametrize(
    ("after", "qps", "success", "p50_ms", "p99_ms"),
    [
        pytest.param(ZERO, 0.0, None, None, None, id="no-traffic"),
        pytest.param(({"200": 100}, (100, 0, 0, 0)), 50.0, 1.0, 50.0, 99.0, id="first-bucket-from-0"),
        pytest.param(({"200": 100}, (0, 100, 0, 0)), 50.0, 1.0, 150.0, 199.0, id="within-0.1-0.2"),
        pytest.param(({"200": 90, "503": 10}, (50, 0, 50, 0)), 50.0, 0.9, 100.0, 494.0, id="split-with-5xx"),
        pytest.param(({"200": 4}, (0, 0, 0, 4)), 2.0, 1.0, 500.0, 500.0, id="all-above-the-last-bound"),
        pytest.param(({"200": 10, "404": 10}, (20, 0, 0, 0)), 10.0, 1.0, 50.0, 99.0, id="4xx-is-success"),
    ],
)
def test_window_rates_and_interpolated_quantiles(
    after: tuple[dict[str, int], tuple[int, ...]],
    qps: float,
    success: float | None,
    p50_ms: float | None,
    p99_ms: float | None,
) -> None:
    w = window(reading(10.0, *ZERO), reading(12.0, *after), "svc", BOUNDS)
    assert w.qps == pytest.approx(qps)
    assert w.success == (None if success is None else pytest.approx(success))
    assert w.p50_ms == (None if p50_ms is None else pytest.approx(p50_ms))
    assert w.p99_ms == (None if p99_ms is None else pytest.approx(p99_ms))


@pytest.mark.parametrize(
    ("before", "after", "qps"),
    [
        pytest.param(({"200": 1000}, (1000, 0, 0, 0)), ({"200": 30}, (30, 0, 0, 0)), 30.0, id="went-down"),
        pytest.param(None, ({"200": 30}, (30, 0, 0, 0)), 30.0, id="first-answers-count-from-0"),
        pytest.param(({"200": 10}, (10, 0, 0, 0)), None, 0.0, id="no-longer-reported"),
    ],
)
def test_a_counter_that_went_down_or_appeared_counts_from_zero(
    before: tuple[dict[str, int], tuple[int, ...]] | None,
    after: tuple[dict[str, int], tuple[int, ...]] | None,
    qps: float,
) -> None:
    prev = reading(0.0, *before) if before else Reading(0.0)
    cur = reading(1.0, *after) if after else Reading(1.0)
    assert window(prev, cur, "svc", BOUNDS).qps == qps


def test_rates_read_the_service_latency_buckets_by_default() -> None:
    """The gateway counts into SERVICE_LATENCY_BUCKETS_S (0.001, 0.0025, ...): 10 answers in the
    second bucket have a p50 halfway through it."""
    after = Reading(1.0, {"svc": MemberSample({"200": 10}, (0, 10) + (0,) * 14)})
    w = window(Reading(0.0), after, "svc")
    assert len(SERVICE_LATENCY_BUCKETS_S) == 16
    assert w.p50_ms == pytest.approx(1.75) and w.qps == 10.0


# ---- escaping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;", id="tags"),
        pytest.param('" onmouseover="x', "&quot; onmouseover=&quot;x", id="double-quote"),
        pytest.param("' autofocus", "&#x27; autofocus", id="single-quote"),
        pytest.param("a & b", "a &amp; b", id="ampersand"),
        pytest.param(None, "—", id="none-as-dash"),
        pytest.param(3.5, "3.5", id="number"),
    ],
)
def test_esc(value: object, shown: str) -> None:
    assert esc(value) == shown


ROW: dict[str, Any] = {
    "name": "<b>svc</b>",
    "status": "Running",
    "ready": 1,
    "desired": 2,
    "qps": 1.0,
    "p50_ms": 3.0,
    "p99_ms": 9.0,
    "success": 0.5,
    "in_flight": 0,
    "decision": "<img src=x onerror=alert(1)>",
    "cost": None,
}


def test_a_service_row_escapes_every_value_and_marks_what_is_wrong() -> None:
    row = pages.service_row(ROW)
    assert "<b>" not in row and "<img" not in row and "&lt;img src=x" in row
    assert '<td data-field="replicas" class="bad">1 / 2</td>' in row  # short of desired
    assert '<td data-field="success" class="bad">50.0%</td>' in row


def test_the_csp_allows_no_inline_code_and_no_other_origin() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert "unsafe" not in CSP and "http" not in CSP


# ---- action forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        pytest.param({"action": "scale", "replicas": "3"}, [], id="scale"),
        pytest.param({"action": "start"}, [], id="start"),
        pytest.param({"action": "stop", "confirm": "yes"}, [], id="stop-confirmed"),
        pytest.param(
            {"action": "scale", "replicas": "-1"},
            ["replicas: must be a whole number ≥ 0, got '-1'"],
            id="scale-negative",
        ),
        pytest.param(
            {"action": "scale", "replicas": "two"},
            ["replicas: must be a whole number ≥ 0, got 'two'"],
            id="scale-text",
        ),
        pytest.param(
            {"action": "delete"}, ["confirm: tick the box to delete the service"], id="delete-unconfirmed"
        ),
        pytest.param(
            {"action": "rollback", "version": "x"},
            ["version: must be a whole number ≥ 0, got 'x'", "confirm: tick the box to rollback the service"],
            id="rollback-all-errors-at-once",
        ),
        pytest.param(
            {"action": "explode"},
            ["action: 'explode' is not one of delete, rollback, scale, start, stop"],
            id="unknown",
        ),
        pytest.param({}, ["action: '' is not one of delete, rollback, scale, start, stop"], id="no-action"),
    ],
)
def test_action_form_checks(form: dict[str, str], errors: list[str]) -> None:
    assert action_errors(form) == errors


# ---- the cold-start bar and the charts ----------------------------------------------------------

SPANS = {"pull_s": None, "fetch_s": 1.0, "prepare_s": None, "start_s": 2.0, "warm_s": 1.0, "total_s": 4.5}


@pytest.mark.parametrize(
    ("cold", "segments", "total"),
    [
        pytest.param(
            SPANS, {"fetch": 25, "start": 50, "warm": 25}, "total 4.50s", id="total-is-text-not-a-segment"
        ),
        pytest.param(
            {**SPANS, "total_s": None}, {"fetch": 25, "start": 50, "warm": 25}, "total 4.00s", id="no-total"
        ),
        pytest.param({"total_s": 3.0}, {}, None, id="nothing-measured"),
    ],
)
def test_cold_bar(cold: dict[str, Any], segments: dict[str, int], total: str | None) -> None:
    bar = pages.cold_bar(cold)
    for name, share in segments.items():
        assert f'class="seg seg-{name}" data-share="{share}"' in bar
    assert bar.count('class="seg ') == len(segments) and "seg-total" not in bar
    assert (total in bar) if total else bar == "—"


@pytest.mark.parametrize(
    ("values", "has_line", "text"),
    [
        pytest.param([], False, "no data yet", id="empty"),
        pytest.param([3.0], False, "no data yet", id="one-point"),
        pytest.param([1.0, None, 4.0], True, ">4</text>", id="line-and-latest"),
    ],
)
def test_sparkline(values: list[float | None], has_line: bool, text: str) -> None:
    svg = sparkline(values, label="QPS")
    assert ("<polyline" in svg) is has_line and text in svg and 'aria-label="QPS"' in svg


# ---- the cost column and the idle-spend badge ----------------------------------------------------


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        pytest.param({"monthly_total": 1234.5, "currency": "RMB"}, "1,234.50 RMB", id="priced"),
        pytest.param({"monthly_total": 0, "currency": "USD"}, "0.00 USD", id="zero-is-a-price"),
        pytest.param({"monthly_total": None, "notes": ["no type"]}, None, id="unpriced"),
        pytest.param({"error": "catalog: unreadable"}, None, id="catalog-error"),
    ],
)
def test_cost_text(cost: dict[str, Any], shown: str | None) -> None:
    assert cost_text(cost) == shown


IDLE = {"idle_replicas": 3, "monthly_cost": 6480.0, "currency": "RMB", "message": "4 replicas run <b>"}


@pytest.mark.parametrize(
    ("idle", "badge"),
    [
        pytest.param(None, "", id="not-idle-no-badge"),
        # 3 idle replicas x 3 RMB/h x 720 h = 6480 RMB/month (the alarm's figure, shown as is)
        pytest.param(IDLE, "idle 3 · 6,480.00 RMB/month", id="priced"),
        pytest.param({**IDLE, "monthly_cost": None}, "idle 3</span>", id="unpriced"),
    ],
)
def test_the_idle_badge_names_idle_replicas_and_their_cost(idle: dict[str, Any] | None, badge: str) -> None:
    row = pages.service_row({**ROW, "cost": "7,000.00 RMB", "idle": idle})
    assert badge in row
    assert "<b>" not in row  # the alarm's message is escaped in the title
    assert ('class="badge bad"' in row) is (idle is not None)


# ---- the Stress page ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        pytest.param({"step_s": "2", "duration_s": "20", "max_qps": "200"}, [], id="short-test"),
        pytest.param(
            {"step_s": "x", "duration_s": "20", "max_qps": ""},
            ["step_s: must be a number, got 'x'", "max_qps: must be a number, got ''"],
            id="every-bad-field-named",
        ),
    ],
)
def test_stress_form_errors(form: dict[str, str], errors: list[str]) -> None:
    assert stress_page.plan_body(form)[1] == errors


def test_stress_steps_mark_achieved_short_of_offered_and_escape() -> None:
    steps = [
        {"offered": 10, "send_rate": 10, "throughput": 10, "latency": {"p50": 2, "p99": 5}, "errors": 0},
        # 80 ok/s of 100 offered: under 95% of the offered rate, red
        {"offered": 100, "send_rate": 100, "throughput": 80, "latency": {"p50": 9}, "errors": "<b>"},
    ]
    html = stress_page.steps_html(steps)
    assert html.count('class="bad"') == 1 and '<td class="bad">80</td>' in html
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_stress_form_defaults_are_a_short_test() -> None:
    assert stress_page.SHORT_TEST == {"step_s": "2", "duration_s": "20", "max_qps": "200"}


class RecordingConsole(Console):
    """The console with its in-process API calls recorded (each still goes to the real API)."""

    calls: list[str]

    async def api(self, method: str, path: str, body: Any = None) -> Answer:
        self.calls.append(f"{method} {path}")
        return await super().api(method, path, body)


@pytest.mark.parametrize(
    ("types", "call_info"),
    [
        pytest.param({"s1": None, "s2": "Standard"}, [], id="no-async-service"),
        pytest.param({"a1": "Async", "s1": None, "s2": None}, ["a1"], id="one-async-of-three"),
    ],
)
def test_the_async_page_makes_one_list_call_and_call_info_for_async_services_only(
    tmp_path: Path, types: dict[str, str | None], call_info: list[str]
) -> None:
    store = Store(tmp_path)
    for name, type_ in types.items():
        meta = {"name": name, "instance": 1} | ({"type": type_} if type_ else {})
        store.create_service(parse_spec({"metadata": meta, "containers": [{"command": "x", "port": 8000}]}))
    cp = ControlPlane(store, "http://127.0.0.1:9")  # the queues' gateway: nothing listens there
    app = create_app(cp)
    c = RecordingConsole(app, cp, Sessions(cp.admin_token), None, time.time)  # type: ignore[arg-type]
    c.calls = []
    queues_page.add(c)
    session = c.sessions.login(cp.admin_token, time.time())
    assert session is not None
    # The service list says each service's mode: what the page needs to pick the async ones.
    listed = {s["name"]: s["mode"] for s in TestClient(app).get(
        "/api/v1/services", headers={"Authorization": cp.admin_token}).json()["services"]}  # fmt: skip
    assert listed == {n: "async" if t == "Async" else "sync" for n, t in types.items()}
    page = TestClient(app, cookies={COOKIE: session.id}).get("/console/async")
    assert page.status_code == 200
    assert c.calls == [
        "GET /api/v1/services",
        *(f"GET /api/v1/services/{name}/call-info" for name in call_info),
        "GET /api/v1/batch",
    ]
    for name in call_info:  # its queue is shown, with the gateway's refusal
        assert f'id="q-{name}"' in page.text and "queue:" in page.text
