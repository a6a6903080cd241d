"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real
server with real test-server replicas: login, deploy by pasting a spec, a killed replica coming
back on the page without a reload, and the refusals (wrong token, forged form, markup in a spec).
Screenshots of every page land in ``OPENEAS_ARTIFACTS`` (default: build/console-screenshots)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import Server, new_server, service_spec, stop_and_reap, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = Path(os.environ.get("OPENEAS_ARTIFACTS", "build")) / "console-screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed at {CHROMIUM} (scripts/setup.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="chromium: playwright is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = new_server(tmp_path_factory.mktemp("console") / "data").start()
    yield s
    stop_and_reap(s)


def _login(browser: Any, srv: Server) -> Any:
    page = browser.new_page()
    page.goto(f"{srv.api_url}/console")
    page.fill("#token", srv.info["admin_token"])
    page.click("button[type=submit]")
    page.wait_for_url("**/console/services")
    return page


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_wrong_token_is_refused_and_pages_need_a_session(browser: Any, srv: Server):
    page = browser.new_page()
    page.goto(f"{srv.api_url}/console/services")
    assert page.url.endswith("/console/login")
    _shot(page, "login")
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    assert "token: wrong admin token" in page.inner_text("#errors")
    assert page.context.cookies() == []


def test_deploy_by_pasting_then_a_killed_replica_comes_back_without_reload(browser: Any, srv: Server):
    page = _login(browser, srv)
    cookie = page.context.cookies()[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.goto(f"{srv.api_url}/console/deploy")
    page.fill("#spec", json.dumps(service_spec("web1")))
    page.click("button[value=check]")
    assert "create version 1" in page.inner_text("#plan")
    _shot(page, "deploy-plan")
    page.click("button[value=deploy]")
    page.wait_for_url("**/console/services/web1")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    wait_for(lambda: "1 / 1 ready" in page.inner_text("#status"), 60, 0.1, "web1 Ready on the page")
    pid = srv.client.describe("web1")["replicas"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    # The page's own script (the CSP allows no eval) swaps in what the live stream sends.
    wait_for(
        lambda: (
            page.inner_text("#replicas [data-field=restarts]") == "1"
            and "1 / 1 ready" in page.inner_text("#status")
        ),
        60,
        0.1,
        "the restarted replica on the page",
    )
    # the replica's log tail followed live: its second start's line came without a reload
    wait_for(lambda: page.inner_text("#log").count("listening on") >= 2, 30, 0.1, "the restart in the log tail")
    assert page.evaluate("window.sameDocument") is True
    _shot(page, "service")
    page.goto(f"{srv.api_url}/console/services")
    page.wait_for_selector("#svc-web1")
    assert "1 / 1" in page.inner_text("#svc-web1 [data-field=replicas]")
    page.evaluate("window.sameDocument = true")
    # Live rates come from the gateways' stats datagram (no /metrics scrape): traffic shows
    # QPS, p50/p99 and 100% success on the open page without a reload.
    info = srv.client.call_info("web1")
    cell = lambda f: page.inner_text(f"#svc-web1 [data-field={f}]")  # noqa: E731
    with requests.Session() as s:

        def busy() -> bool:
            for _ in range(10):
                s.get(info["endpoint"] + "/v1/models", headers={"Authorization": info["token"]}, timeout=10)
            return float(cell("qps")) > 0 and cell("p99") != "—" and cell("success") == "100.0%"

        wait_for(busy, 10, 0.05, "live QPS, p99 and success on the services page")
    assert page.evaluate("window.sameDocument") is True
    _shot(page, "services")


def test_versions_diff_then_rollback_and_the_call_snippets(browser: Any, srv: Server):
    spec = service_spec("web1")
    spec["metadata"]["instance"] = 2  # v2 differs from v1 in one field
    srv.client.update("web1", spec)
    page = _login(browser, srv)
    page.goto(f"{srv.api_url}/console/services/web1")
    assert page.input_value("#diff_from") == "1" and page.input_value("#diff_to") == "2"
    page.click("#compare button[type=submit]")
    diff = page.inner_text("#diff")
    assert '-    "instance": 1' in diff and '+    "instance": 2' in diff, diff
    _shot(page, "service-diff")
    assert "<token>" in page.inner_text(".snippets")  # no token until revealed
    page.click("text=Reveal token")
    token = srv.client.call_info("web1")["token"]
    assert page.inner_text("#token") == token and page.inner_text(".snippets").count(token) == 3
    form = page.locator("#versions form").first  # v1's rollback, behind its "yes, …" box
    form.locator("input[name=confirm]").check()
    form.locator("button").click()
    page.wait_for_url("**/console/services/web1")
    assert "v3" in page.inner_text("#versions") and srv.client.versions("web1")[-1]["current"]


def test_forged_form_is_refused(browser: Any, srv: Server):
    page = _login(browser, srv)
    cookie = page.context.cookies()[0]
    forged = requests.post(
        f"{srv.api_url}/console/deploy",
        data={"spec": json.dumps(service_spec("forged")), "op": "deploy", "csrf": "guess"},
        cookies={cookie["name"]: cookie["value"]},
        allow_redirects=False,
        timeout=10,
    )
    assert forged.status_code == 403 and "csrf:" in forged.text
    anonymous = requests.post(
        f"{srv.api_url}/console/deploy", data={"spec": "{}"}, allow_redirects=False, timeout=10
    )
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"
    assert "forged" not in [s["name"] for s in srv.client.list()]


def test_markup_in_a_spec_is_shown_escaped_and_never_run(browser: Any, srv: Server):
    page = _login(browser, srv)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{srv.api_url}/console/deploy")
    csp = page.evaluate("fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    spec = service_spec("<script>alert(1)</script>")
    page.fill("#spec", json.dumps(spec))
    page.click("button[value=check]")
    assert "metadata.name" in page.inner_text("#errors")
    assert "<script>alert(1)</script>" in page.input_value("#spec")  # given back as text, not markup
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # the console's own
    assert dialogs == []
    _shot(page, "deploy-errors")


def test_a_weight_slider_moves_live_traffic(browser: Any, srv: Server):
    c = srv.client
    for name in ("blue", "green"):
        c.deploy(service_spec(name))
    for name in ("blue", "green"):
        c.wait_ready(name, 1, timeout_s=90)
    c.group_create({"name": "canary", "routes": [{"service": "blue", "weight": 1000}, {"service": "green"}]})
    info = c.group_call_info("canary")
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                s.get(info["endpoint"] + "/v1/models", headers={"Authorization": info["token"]}, timeout=10)
                time.sleep(0.01)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        page = _login(browser, srv)
        page.goto(f"{srv.api_url}/console/groups/canary")
        count = lambda svc: int(page.inner_text(f"#stat-{svc} [data-field=requests]"))  # noqa: E731
        wait_for(lambda: count("blue") > 20, 10, 0.05, "blue's traffic on the page")
        page.fill("#w-blue", "0")
        page.fill("#w-green", "1000")
        assert page.inner_text("#w-green-out") == "1000"  # the slider's value follows it
        page.click("#weights button[type=submit]")
        page.wait_for_url("**/console/groups/canary")
        applied = time.monotonic()
        green0 = count("green")
        # Within a second on a quiet machine (277-708 ms, the live stream's 0.5 s tick included);
        # the figure is printed. The bound only holds the live path (no reload): a CI run at 3
        # workers on 2 cores missed 1 s once.
        wait_for(lambda: count("green") >= green0 + 10, 15.0, 0.02, "green's count rising")
        follow_s = time.monotonic() - applied
        blue = count("blue")
        time.sleep(1.0)
        assert count("blue") <= blue + 2  # what was in flight when the weights changed, at most
        print(f"per-member counts followed the slider in {follow_s * 1000:.0f} ms")
        _shot(page, "group")
        _rollout_paused_resumed_and_aborted(page, srv)
    finally:
        stop.set()
        worker.join(15)


def _rollout_paused_resumed_and_aborted(page: Any, srv: Server) -> None:
    """A staged rollout on the group page: its progress, pause there, resume by the API (seen
    live), abort there behind its box; the weights are restored."""
    status = lambda: page.inner_text("#rollout [data-field=rollout-status]")  # noqa: E731
    body = {"to": "blue", "from": "green", "steps": [10, 100], "hold_s": 600}
    srv.client.request("POST", "/api/v1/groups/canary/rollout", json_body=body)
    wait_for(lambda: page.inner_text("#rollout [data-field=rollout-step]") == "1/2", 10, 0.1, "step 1/2, live")
    assert status() == "Running" and "10% to the candidate" in page.inner_text("#rollout")
    with page.expect_navigation():  # the form posted (the same URL comes back)
        page.click("#rollout button:has-text('Pause')")
    assert status() == "Paused"
    page.evaluate("window.sameDocument = true")
    srv.client.request("POST", "/api/v1/groups/canary/rollout/resume")
    wait_for(lambda: status() == "Running", 15, 0.1, "resumed by the API, on the page without a reload")
    assert page.evaluate("window.sameDocument") is True
    _shot(page, "group-rollout")
    page.check("#rollout input[name=confirm]")
    time.sleep(1.5)  # a look or two of the live stream: the ticked box stays ticked
    with page.expect_navigation():
        page.click("#rollout button:has-text('Abort')")
    assert status() == "Aborted"
    weights = lambda: {m["service"]: m["weight"] for m in srv.client.request("GET", "/api/v1/groups/canary")["members"]}  # noqa: E731
    wait_for(lambda: weights() == {"blue": 0, "green": 1000}, 10, 0.1, "the weights from before the rollout")


def test_services_page_with_50_services_paints_first_quickly(browser: Any, srv: Server):
    c = srv.client
    have = {s["name"] for s in c.list()}
    for i in range(50 - len(have)):
        spec = service_spec(f"idle{i:02d}")
        spec["metadata"]["instance"] = 0  # 50 services, no replica started
        c.deploy(spec)
    assert len(c.list()) >= 50
    page = _login(browser, srv)
    fcps = []
    for _ in range(3):  # the browser's own figure (its paint entry), three loads in the open tab
        page.goto(f"{srv.api_url}/console/services")
        fcps.append(
            page.evaluate(
                "new Promise(done => new PerformanceObserver((list, obs) => {"
                " const e = list.getEntriesByName('first-contentful-paint')[0];"
                " if (e) { obs.disconnect(); done(e.startTime); } }).observe({type: 'paint', buffered: true}))"
            )
        )
    rows = page.locator("#services tbody tr").count()
    print(f"services page: {rows} services, first contentful paint {', '.join(f'{x:.0f}' for x in fcps)} ms")
    # The goal is 300 ms (issue 25): bench/console_paint.py measures it against its anchors
    # (bench/RESULTS.md). Here the best of three loads is held under 1 s: the machine is shared
    # (a load average of 30 on 2 cores was seen), and one load can wait for a busy core.
    assert rows >= 50 and min(fcps) <= 1000
    _shot(page, "services-50")


def test_an_open_console_tab_does_not_hold_the_servers_stop(browser: Any, tmp_path: Path):
    """A console tab left open (its page follows Server-Sent Events): the streams end as the server
    stops, which then exits by itself. Before, the API server waited for them until it was killed
    (30 s in this harness); a cancel after the API server's grace would show in its log."""
    s = new_server(tmp_path / "data").start()
    try:
        page = _login(browser, s)  # the Services page, its live stream open
        wait_for(lambda: page.evaluate("document.readyState") == "complete", 10, what="the page loaded")
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(25) == 0  # exited by itself, not killed
        assert "timeout graceful shutdown exceeded" not in (s.data_dir / "server.out").read_text()
        page.close()
    finally:
        stop_and_reap(s)
