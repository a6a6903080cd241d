from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Server, new_server, stop_and_reap
from tests.pg_fixtures import pg_server, pg_url, store_url  # noqa: F401  (fixtures for every module)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = new_server(tmp_path / "data").start()
    yield srv
    stop_and_reap(srv)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module whose tests each deploy services of their own names."""
    srv = new_server(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    stop_and_reap(srv)


# scripts/test.sh installs Redis, PostgreSQL, podman, wrk, nginx and Chromium and sets these: there, a test
# that skips for want of one of them fails instead (a skip would hide that a required component was
# never exercised: a bench smoke test without wrk or nginx, a queue suite without Redis).
REQUIRED = {
    "OPENEAS_REQUIRE_REDIS": "redis",
    "OPENEAS_REQUIRE_POSTGRES": "postgresql",
    "OPENEAS_REQUIRE_CONTAINERS": "podman",
    "OPENEAS_REQUIRE_WRK": "wrk",
    "OPENEAS_REQUIRE_NGINX": "nginx",
    "OPENEAS_REQUIRE_RAY": "ray",
    "OPENEAS_REQUIRE_BROWSER": "chromium",
    "OPENEAS_REQUIRE_VLLM": "vllm",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2]).lower()
    for var, component in REQUIRED.items():
        if os.environ.get(var) == "1" and component in reason:
            report.outcome = "failed"
            report.longrepr = f"{var}=1, but this test skipped: {report.longrepr[2]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The run ends with what was skipped and why, one line per reason."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for rep in skipped:
        why = str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons[why] = reasons.get(why, 0) + 1
    terminalreporter.section(f"skipped: {len(skipped)}")
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{n:5d}  {why}")
