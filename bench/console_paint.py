"""First contentful paint of the console's Services page with 50 services (issue 25's goal:
≤ 300 ms): ``python bench/console_paint.py [--services 50] [--loads 10]``.

A real ``openeas server`` with ``--services`` services (no replica started), Debian's headless
Chromium through Playwright, logged in once. Each load opens the page in a fresh browser context
(nothing cached: the page, its stylesheet and its script all come from the server) and reads the
browser's own figures: the ``first-contentful-paint`` paint entry and the navigation entry's
``responseStart`` (when the server's first byte came). Anchors in the same run, load by load:

- ``static``: a page of the same size and markup served by a plain threaded HTTP server in this
  process (what the browser alone costs);
- ``login``: the console's login page on the same server (the server's answer without any data).

Prints each median and max, the Services page's ratio to the anchors, and a verdict against the
goal. All traffic stays on 127.0.0.1; the server is stopped at the end."""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_MS = 300.0
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAINT_JS = (
    "new Promise(done => new PerformanceObserver((list, obs) => {"
    " const e = list.getEntriesByName('first-contentful-paint')[0];"
    " if (!e) return; obs.disconnect();"
    " const n = performance.getEntriesByType('navigation')[0];"
    " done({fcp: e.startTime, ttfb: n.responseStart}); }).observe({type: 'paint', buffered: true}))"
)


def static_server(body: bytes) -> tuple[http.server.ThreadingHTTPServer, str]:
    """The ``static`` anchor: ``body`` at ``/`` from a thread in this process."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/":  # the browser's own asks (favicon): not part of the page
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # A browser context closed while its connection was still being answered (CI saw a
            # BrokenPipeError here): the load was measured already; anything else is a fault.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


def measure(browser: Any, url: str, cookies: Any, page: Any | None) -> dict[str, float]:
    """One load of ``url``: in ``page`` (an open tab: a navigation, its files cached) or, when
    None, in a fresh context with the session ``cookies`` (nothing cached, a new renderer)."""
    if page is not None:
        page.goto(url)
        return dict(page.evaluate(PAINT_JS))
    ctx = browser.new_context()
    try:
        ctx.add_cookies(cookies)
        fresh = ctx.new_page()
        fresh.goto(url)
        return dict(fresh.evaluate(PAINT_JS))
    finally:
        ctx.close()


def summary(name: str, runs: list[dict[str, float]]) -> float:
    fcp = [r["fcp"] for r in runs]
    ttfb = [r["ttfb"] for r in runs]
    print(
        f"{name:<9} FCP median {statistics.median(fcp):6.0f} ms  max {max(fcp):6.0f} ms   "
        f"first byte median {statistics.median(ttfb):6.0f} ms  max {max(ttfb):6.0f} ms"
    )
    return statistics.median(fcp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=50, help="services on the page (default 50)")
    ap.add_argument("--loads", type=int, default=10, help="loads of each page (default 10)")
    args = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit(f"chromium is not installed at {CHROMIUM} (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright
    from tests.harness import new_server, service_spec, stop_and_reap

    srv = new_server(Path(tempfile.mkdtemp(prefix="console-paint-")) / "data").start()
    try:
        c = srv.client
        for i in range(args.services):
            spec = service_spec(f"idle{i:02d}")
            spec["metadata"]["instance"] = 0  # listed, priced, no replica started
            c.deploy(spec)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(f"{srv.api_url}/console/login")
            page.fill("#token", srv.info["admin_token"])
            page.click("button[type=submit]")
            page.wait_for_url("**/console/services")
            cookies = ctx.cookies()
            rows = page.locator("#services tbody tr").count()
            static, static_url = static_server(page.content().encode())
            ctx.close()
            urls = {
                "static": static_url,
                "login": f"{srv.api_url}/console/login",
                "services": f"{srv.api_url}/console/services",
            }
            tabs = {}
            for name in urls:  # one open tab per page, logged in
                tabs[name] = browser.new_context().new_page()
                tabs[name].context.add_cookies(cookies)
                tabs[name].goto(urls[name])
            runs: dict[tuple[str, str], list[dict[str, float]]] = {}
            for _ in range(args.loads):  # interleaved: the machine's drift hits all alike
                for mode in ("open tab", "fresh"):
                    for name, url in urls.items():
                        tab = tabs[name] if mode == "open tab" else None
                        runs.setdefault((mode, name), []).append(measure(browser, url, cookies, tab))
            browser.close()
            static.shutdown()
    finally:
        stop_and_reap(srv)
    print(f"Services page with {rows} services, {args.loads} loads of each page in each mode")
    med = {}
    for mode in ("open tab", "fresh"):
        print(
            f"-- {mode}: "
            + ("a navigation in an open tab" if mode == "open tab" else "a new context each load")
        )
        med[mode] = {name: summary(name, runs[(mode, name)]) for name in urls}
        m = med[mode]
        print(
            f"services / static {m['services'] / m['static']:.2f}x, "
            f"services / login {m['services'] / m['login']:.2f}x"
        )
    for mode, m in med.items():
        verdict = "met" if m["services"] <= GOAL_MS else "missed"
        print(
            f"verdict ({mode}): {verdict} (goal: first contentful paint ≤ {GOAL_MS:.0f} ms; "
            f"median {m['services']:.0f} ms)"
        )


if __name__ == "__main__":
    main()
