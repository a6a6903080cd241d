"""The console's Stress and Async-and-batch pages in a real headless Chromium against a real
server with real test-server replicas (a short stress test filling its step table live; a
queue's depth and dead letters with re-drive; a batch job's progress, cancel and resume), then
axe-core (npm, vendored by scripts/vendor_axe.sh into tests/assets/) on every console page: no
serious or critical violation. Screenshots land next to test_console.py's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import Server, new_server, service_spec, stop_and_reap, wait_for
from tests.test_console import _login, _shot, browser  # noqa: F401  (browser: a fixture)

pytestmark = pytest.mark.slow
AXE = Path(__file__).parent / "assets" / "axe.min.js"
BAD = ("serious", "critical")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = new_server(tmp_path_factory.mktemp("console-ops") / "data").start()
    c = s.client
    c.deploy(service_spec("web", args="--latency-ms 20"))
    dead = service_spec("flaky", args="--failure-rate 1", queue={"max_delivery": 1})
    dead["metadata"]["type"] = "Async"
    c.deploy(dead)
    c.deploy(service_spec("slow", args="--latency-ms 300"))
    for name in ("web", "flaky", "slow"):
        c.wait_ready(name, 1, timeout_s=90)
    c.group_create({"name": "pair", "routes": [{"service": "web", "weight": 100}, {"service": "slow"}]})
    yield s
    stop_and_reap(s)


def _axe(page: Any) -> list[str]:
    """The serious and critical violations axe-core finds on ``page`` (rule: help, targets)."""
    page.add_script_tag(content=AXE.read_text())  # CSP: Playwright's bypass_csp context below
    found = page.evaluate("axe.run(document).then(r => r.violations)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in BAD
    ]


def test_a_short_stress_test_fills_its_steps_live_and_recommends(browser: Any, srv: Server) -> None:  # noqa: F811
    page = _login(browser, srv)
    page.goto(f"{srv.api_url}/console/stress")
    page.select_option("#target", "web")
    for field, value in (("#step_s", "1"), ("#duration_s", "6"), ("#max_qps", "80")):
        page.fill(field, value)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/console/stress/*")
    page.evaluate("window.sameDocument = true")
    wait_for(lambda: page.locator("#steps tbody tr").count() >= 2, 30, 0.1, "two steps on the page, live")
    wait_for(lambda: "running" not in page.inner_text("#summary"), 60, 0.2, "the test's summary")
    summary = page.inner_text("#summary")
    print(summary)
    assert page.evaluate("window.sameDocument") is True  # filled by the live stream, no reload
    assert "saturat" in summary and "recommendation" in summary
    _shot(page, "stress-run")
    page.goto(f"{srv.api_url}/console/stress")
    _shot(page, "stress")


def test_async_queue_dead_letters_and_redrive(browser: Any, srv: Server) -> None:  # noqa: F811
    info = srv.client.call_info("flaky")
    h = {"Authorization": info["token"]}
    for i in range(3):
        requests.post(info["endpoint"], data=json.dumps({"x": i}), headers=h, timeout=10).raise_for_status()
    page = _login(browser, srv)
    page.goto(f"{srv.api_url}/console/async")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads

    def dead(n: str) -> bool:
        return page.inner_text("#q-flaky [data-field=dead]") == n

    wait_for(lambda: dead("3"), 60, 0.1, "3 dead letters, live")
    assert "answered 500" in page.inner_text("#queues")
    assert page.evaluate("window.sameDocument") is True  # swapped in by the live stream
    _shot(page, "async")
    page.click("#queues button[type=submit]")
    page.wait_for_url("**/console/async")
    assert page.locator("#errors").count() == 0
    # re-driven, each fails once more (max_delivery 1) and is dead again: 3, via 0 or 3 in between
    wait_for(lambda: dead("3"), 60, 0.1, "re-driven, dead again")


def test_a_batch_job_shows_progress_and_is_cancelled_then_resumed(
    browser: Any,  # noqa: F811
    srv: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    d = srv.data_dir.parent
    with (d / "in.jsonl").open("w") as f:
        for i in range(60):
            body = {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 2}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
            f.write("\n")
    job = srv.client.request(
        "POST",
        "/api/v1/batch",
        json_body={"service": "slow", "input": str(d / "in.jsonl"), "output": str(d / "out.jsonl"),
                   "shard_lines": 5, "concurrency": 1},
    )  # fmt: skip
    row = f"#job-{job['id']}"
    page = _login(browser, srv)
    page.goto(f"{srv.api_url}/console/async")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    progress = lambda: page.inner_text(f"{row} [data-field=progress]")  # noqa: E731
    # the job was submitted before the page opened: its row is there at 0 lines or a little more
    first = progress()
    wait_for(lambda: progress() != first, 30, 0.1, "progress on the page, live")
    assert page.evaluate("window.sameDocument") is True  # swapped in by the live stream, no reload
    _shot(page, "batch")
    page.click(f"{row} button:has-text('Cancel')")
    page.wait_for_url("**/console/async")
    assert page.inner_text(f"{row} [data-field=state]") == "Cancelled"
    page.click(f"{row} button:has-text('Resume')")
    page.wait_for_url("**/console/async")
    assert page.inner_text(f"{row} [data-field=state]") == "Running"
    assert page.locator(f"{row} button:has-text('Cancel')").count() == 1


def test_every_page_has_no_serious_or_critical_accessibility_violation(browser: Any, srv: Server) -> None:  # noqa: F811
    ctx = browser.new_context(bypass_csp=True)  # only to inject axe; the pages' own CSP is tested elsewhere
    page = ctx.new_page()
    page.goto(f"{srv.api_url}/console/login")
    found = {"login": _axe(page)}
    page.fill("#token", srv.info["admin_token"])
    page.click("button[type=submit]")
    page.wait_for_url("**/console/services")
    runs = srv.client.request("GET", "/api/v1/stress?limit=1").get("reports", [])
    paths = ["services", "services/web", "deploy", "groups/pair", "stress", "async"]
    paths += [f"stress/{r['id']}" for r in runs]
    for path in paths:
        page.goto(f"{srv.api_url}/console/{path}")
        found[path] = _axe(page)
    page.goto(f"{srv.api_url}/console/deploy")
    page.fill("#spec", '{"metadata": {"name": "x y"}}')
    page.click("button[value=check]")
    found["deploy errors"] = _axe(page)
    ctx.close()
    assert {k: v for k, v in found.items() if v} == {}
    print(f"axe-core: {len(found)} pages, no serious or critical violation")
