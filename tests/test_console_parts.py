"""The console's newer pure parts without a browser: the versions diff (API and page), the log
tail (bounded, escaped), the call snippets, the staged rollout's section and its forms, the
inlined stylesheet's hash in the CSP, and which route answers each live stream's URL."""

from __future__ import annotations

import base64
import hashlib
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import Match

from openeas.api.versions import DIFF_CONTEXT, spec_diff
from openeas.console import add_console, group_pages, pages, service_parts
from openeas.console.html import CSP, STYLE_HASH, STYLESHEET, layout
from openeas.console.routes import GROUP_POLL_S
from openeas.console.service_parts import LOG_LINE_CHARS, LOG_LINES, LOG_POLL_S
from openeas.server import API_SHUTDOWN_GRACE_S, ApiComponent

# ---- documented defaults (docs/console.md, "Defaults") ------------------------------------------


@pytest.mark.parametrize(
    ("value", "documented"),
    [
        pytest.param(LOG_LINES, 100, id="log-tail-100-lines"),
        pytest.param(LOG_LINE_CHARS, 500, id="log-line-500-chars"),
        pytest.param(LOG_POLL_S, 1.0, id="log-read-every-1s"),
        pytest.param(GROUP_POLL_S, 1.0, id="group-looked-at-every-1s"),
        pytest.param(DIFF_CONTEXT, 3, id="diff-3-lines-of-context"),
        pytest.param(API_SHUTDOWN_GRACE_S, 10, id="api-requests-let-finish-10s-on-the-way-down"),
    ],
)
def test_defaults_are_the_documented_numbers(value: float, documented: float) -> None:
    assert value == documented


def test_the_api_server_cancels_what_still_runs_after_its_shutdown_grace() -> None:
    with socket.socket() as sock:
        api = ApiComponent(FastAPI(), sock)
        assert api.server.config.timeout_graceful_shutdown == API_SHUTDOWN_GRACE_S


# ---- versions diff ------------------------------------------------------------------------------

V1 = {"metadata": {"name": "web", "instance": 1}, "containers": [{"image": "a:1", "port": 8000}]}


@pytest.mark.parametrize(
    ("new", "removed", "added"),
    [
        pytest.param(V1, [], [], id="same-spec-no-diff"),
        pytest.param(
            {**V1, "metadata": {"name": "web", "instance": 3}},
            ['-    "instance": 1,'],
            ['+    "instance": 3,'],
            id="one-field",
        ),
        pytest.param(
            {**V1, "autoscaling": {"max_replicas": 4}},
            [],
            ['+  "autoscaling": {', '+    "max_replicas": 4', "+  },"],
            id="a-block-added",
        ),
    ],
)
def test_spec_diff_shows_only_what_changed(
    new: dict[str, Any], removed: list[str], added: list[str]
) -> None:
    lines = spec_diff(V1, new, 1, 2)
    changed = [x for x in lines if x[:1] in "+-" and not x.startswith(("+++", "---"))]
    assert [x for x in changed if x.startswith("-")] == removed
    assert [x for x in changed if x.startswith("+")] == added
    assert lines[:2] == (["--- v1", "+++ v2"] if lines else [])


def test_a_diff_on_the_page_is_escaped_and_marked() -> None:
    html = service_parts.diff_html(["--- v1", "+++ v2", "@@ -1 +1 @@", '-  "a": "<b>"', '+  "a": "<i>"', "   x"])
    assert "<b>" not in html and "<i>" not in html and "&lt;b&gt;" in html
    assert [k for k in ("d-file", "d-hunk", "d-del", "d-add", "d-same") if k in html] == [
        "d-file", "d-hunk", "d-del", "d-add", "d-same",
    ]  # fmt: skip
    assert "same spec" in service_parts.diff_html([])


VERSIONS = [
    {"version": 1, "created_at": "t1", "current": False},
    {"version": 2, "created_at": "t2", "current": False},
    {"version": 3, "created_at": "t3", "current": True},
]


@pytest.mark.parametrize(
    ("pick", "selected"),
    [
        pytest.param(None, ("2", "3"), id="default-the-last-two"),
        pytest.param((1, 3), ("1", "3"), id="any-two"),
    ],
)
def test_versions_offer_a_diff_of_any_two_and_rollback_behind_a_box(
    pick: tuple[int, int] | None, selected: tuple[str, str]
) -> None:
    html = service_parts.versions_html("web", VERSIONS, "tok", pick, [] if pick else None)
    a, b = selected
    assert f'<option value="{a}" selected>' in html.split('id="diff_to"')[0]
    assert f'<option value="{b}" selected>' in html.split('id="diff_to"')[1]
    assert html.count('name="action" value="rollback"') == 2  # every version but the current
    assert html.count('name="confirm" value="yes" required') == 2
    assert html.count('name="csrf" value="tok"') == 2  # the compare form is a GET: no token
    assert ('id="diff"' in html) is (pick is not None)


# ---- log tail -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lines", "longest"),
    [
        pytest.param("a\nb", 2, 1, id="short"),
        pytest.param("\n".join(str(i) for i in range(1000)), LOG_LINES, 3, id="last-100-lines"),
        pytest.param("x" * 10_000, 1, LOG_LINE_CHARS + 1, id="a-long-line-cut"),
    ],
)
def test_the_log_tail_is_bounded(text: str, lines: int, longest: int) -> None:
    out = service_parts.bounded_log(text).split("\n")
    assert len(out) == lines and max(len(x) for x in out) == longest


def test_the_log_tail_is_escaped() -> None:
    frag = service_parts.log_fragment("<script>alert(1)</script>\n& done")
    assert frag["log"] == "&lt;script&gt;alert(1)&lt;/script&gt;\n&amp; done"
    assert service_parts.log_fragment(None)["log"] == "no replica to show"


def test_the_log_section_follows_the_chosen_replica_live() -> None:
    html = service_parts.log_html("web", ["r1", "r2"], "r2", "hello")
    assert '<option value="r2" selected>' in html and ">hello</pre>" in html


# ---- call snippets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "shown"),
    [pytest.param(None, "&lt;token&gt;", id="hidden-until-revealed"), pytest.param("t0k", "t0k", id="revealed")],
)
def test_call_snippets_openai_curl_eas(token: str | None, shown: str) -> None:
    html = service_parts.snippets_html("web", "http://127.0.0.1:8081/api/predict/web", token)
    assert html.count(shown) == 3
    assert 'base_url=&quot;http://127.0.0.1:8081/api/predict/web/v1&quot;' in html
    assert "PredictClient(&quot;http://127.0.0.1:8081&quot;, &quot;web&quot;)" in html
    assert "curl -H &#x27;Authorization:" in html


# ---- staged rollout -----------------------------------------------------------------------------


def rollout(status: str, step: str = "1/2", reason: str = "holding") -> dict[str, Any]:
    return {
        "plan": {"candidate": "<new>", "baseline": "old", "steps": [10, 100], "hold_s": 600},
        "state": {"status": status, "reason": reason},
        "percent": 10,
        "step": step,
    }


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        pytest.param("Running", ["pause", "abort"], id="running-pause-or-abort"),
        pytest.param("Paused", ["resume", "abort"], id="paused-resume-or-abort"),
        pytest.param("Succeeded", [], id="done-nothing"),
        pytest.param("RolledBack", [], id="rolled-back-nothing"),
    ],
)
def test_rollout_section_offers_what_its_status_allows(status: str, actions: list[str]) -> None:
    frag = group_pages.rollout_fragment("g", rollout(status), "tok")
    html = frag["rollout"] + frag["rollout_actions"]
    # the forms depend on the status alone: a new look (reason, step) leaves a ticked box as it is
    later = group_pages.rollout_fragment("g", rollout(status, "2/2", "another look"), "tok")
    assert later["rollout_actions"] == frag["rollout_actions"] and later["rollout"] != frag["rollout"]
    assert [a for a in ("pause", "resume", "abort") if f"/rollout/{a}" in html] == actions
    assert html.count('name="csrf" value="tok"') == len(actions)
    assert ('name="confirm"' in html) is ("abort" in actions)
    assert "<new>" not in html and "&lt;new&gt;" in html and "10% to the candidate" in html


@pytest.mark.parametrize(
    ("what", "form", "errors"),
    [
        pytest.param("pause", {}, [], id="pause"),
        pytest.param("abort", {"confirm": "yes"}, [], id="abort-confirmed"),
        pytest.param("abort", {}, ["confirm: tick the box to abort the rollout"], id="abort-unconfirmed"),
        pytest.param("drop", {}, ["action: 'drop' is not one of abort, pause, resume"], id="unknown"),
    ],
)
def test_rollout_action_errors(what: str, form: dict[str, str], errors: list[str]) -> None:
    assert group_pages.rollout_errors(what, form) == errors


def test_no_rollout_says_how_to_start_one() -> None:
    assert "openeas rollout" in group_pages.rollout_fragment("g", None, "tok")["rollout"]


# ---- first paint: the stylesheet inlined, allowed by its hash -----------------------------------


def test_the_inlined_stylesheet_is_the_one_the_csp_allows() -> None:
    page = layout("x", "")
    digest = base64.b64encode(hashlib.sha256(STYLESHEET.encode()).digest()).decode()
    assert f"sha256-{digest}" == STYLE_HASH and f"'{STYLE_HASH}'" in CSP
    assert page.count("<style>") == 1 and f"<style>{STYLESHEET}</style>" in page
    assert 'rel="stylesheet"' not in page  # nothing for the first paint to wait for


# ---- live streams: each URL reaches its own route -----------------------------------------------


@pytest.fixture(scope="module")
def console_app() -> FastAPI:
    app = FastAPI()
    add_console(app, SimpleNamespace(admin_token="t" * 24, gateway_url="http://127.0.0.1:1"))  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize(
    ("url", "route"),
    [
        pytest.param("/console/live", "/console/live", id="services"),
        pytest.param("/console/live/async", "/console/live/async", id="async-not-a-service-named-async"),
        pytest.param("/console/live/services/async", "/console/live/services/{name}", id="a-service"),
        pytest.param("/console/live/services/web/log", "/console/live/services/{name}/log", id="a-log"),
        pytest.param("/console/live/groups/async", "/console/live/groups/{name}", id="a-group"),
        pytest.param("/console/live/stress/r1", "/console/live/stress/{rid}", id="a-stress-run"),
    ],
)
def test_each_live_url_reaches_its_own_route(console_app: FastAPI, url: str, route: str) -> None:
    scope = {"type": "http", "path": url, "method": "GET", "root_path": ""}
    first = next(r for r in console_app.routes if r.matches(scope)[0] == Match.FULL)
    assert getattr(first, "path", None) == route


# ---- replicas: phase, node, cold start ----------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "shown"),
    [pytest.param(None, "this machine", id="the-servers-machine"), pytest.param("<n1>", "&lt;n1&gt;", id="a-ray-node")],
)
def test_replica_rows_name_their_node_escaped(node: str | None, shown: str) -> None:
    rep = {"id": "r1", "phase": "Ready", "restart_count": 0, "node": node, "host": "127.0.0.1", "port": 1,
           "cold_start": {}, "message": None}  # fmt: skip
    detail = {"replicas": [rep], "status": "Running", "ready_replicas": 1, "desired_replicas": 1}
    assert f"<td>{shown}</td>" in pages.replicas_fragment(detail)["replicas"]
    assert "Node" in pages.REPLICA_HEAD
