"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real
server with real test-server replicas: login, deploy by pasting a spec, a killed replica coming
back on the page without a reload, and the refusals (wrong token, forged form, markup in a spec).
Screenshots of every page land in ``OPENEAS_ARTIFACTS`` (default: build/console-screenshots)."""

from __future__ import annotations

import json
import os
import signal
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
    assert page.evaluate("window.sameDocument") is True
    _shot(page, "service")
    page.goto(f"{srv.api_url}/console/services")
    page.wait_for_selector("#svc-web1")
    assert "1 / 1" in page.inner_text("#svc-web1 [data-field=replicas]")
    _shot(page, "services")


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
