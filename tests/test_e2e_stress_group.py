"""A group's stress test end to end: a real server, two test-server services in a 70/30 group
behind the real gateway, the real CLI (and the server-run API). ``openeas stress <group>`` loads
the group's endpoint with its token; the per-member counts add up to the requests sent, agree with
the gateway's own per-member counters, and the shares are near the weights."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.harness import Server, new_server, service_spec, stop_and_reap

pytestmark = pytest.mark.slow

WEIGHTS = {"heavy": 700, "light": 300}
# 2 steps of 2 s at 50 req/s = 200 requests: the share of a 70% member has a standard deviation of
# sqrt(0.7 x 0.3 / 200) = 3.2 points; the band below is 12 points (nearly 4 of them).
RUN = ["--mode", "manual", "--qps", "50", "--step", "2", "--duration", "5"]
BAND = 0.12


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = new_server(tmp_path_factory.mktemp("stress_group") / "data").start()
    try:
        for name in WEIGHTS:
            s.client.deploy(service_spec(name, args="--latency-ms 5"))
        for name in WEIGHTS:
            s.client.wait_ready(name, 1, timeout_s=90)
        s.client.group_create(
            {"name": "duo", "routes": [{"service": k, "weight": w} for k, w in WEIGHTS.items()]}
        )
        yield s
    finally:
        stop_and_reap(s)


def cli(srv: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli", *args], env=srv.env(), capture_output=True, text=True, timeout=timeout
    )


def live_counts(srv: Server) -> dict[str, int]:
    stats = srv.client.group("duo")["stats"]
    return {k: int(v["live"]["requests"]) for k, v in (stats or {}).items()}


def assert_breakdown(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {r["member"]: r for r in report["members"]}
    assert set(rows) == set(WEIGHTS), rows  # every request answered by a member: no "(none)" row
    assert sum(r["requests"] for r in rows.values()) == report["requests"] >= 150
    for name, weight in WEIGHTS.items():
        r = rows[name]
        assert r["errors"] == 0 and r["ok"] == r["requests"], r
        assert r["expected_share"] == pytest.approx(weight / 1000)
        assert abs(r["share"] - weight / 1000) <= BAND, r
        assert r["p50"] is not None and r["p50"] <= r["p90"] <= r["p99"]
    for step in report["steps"]:  # each step's breakdown adds up to its requests too
        assert sum(m["requests"] for m in step["members"]) == step["requests"]
    assert report["group"]["name"] == "duo"
    return rows


def test_cli_stress_of_a_group_breaks_the_answers_down_by_member(srv: Server) -> None:
    before = live_counts(srv)
    r = cli(srv, "stress", "duo", *RUN, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rows = assert_breakdown(report)
    # The header's attribution agrees with the gateway's own counters of each member (they reach
    # the control plane in the gateway's next stats datagram, every 0.2 s).
    by_header = {k: rows[k]["requests"] for k in WEIGHTS}

    def by_gateway() -> dict[str, int]:
        after = live_counts(srv)
        return {k: after.get(k, 0) - before.get(k, 0) for k in WEIGHTS}

    deadline = time.monotonic() + 5
    while by_gateway() != by_header and time.monotonic() < deadline:
        time.sleep(0.1)
    assert by_gateway() == by_header
    # The terminal report shows the table by member and labels the group-wide figures.
    r = cli(srv, "stress", "show", report["id"])
    assert r.returncode == 0, r.stderr
    assert "by member of group duo" in r.stdout and "heavy" in r.stdout and "light" in r.stdout
    assert "a group has no autoscaling of its own" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["duo", "--apply"], "--apply: 'duo' is a group", id="apply-refused"),
        pytest.param(["nothing_here"], "unknown service or group 'nothing_here'", id="unknown"),
    ],
)
def test_a_group_cannot_be_applied_to_and_an_unknown_name_says_both(
    srv: Server, args: list[str], message: str
) -> None:
    before = live_counts(srv)
    r = cli(srv, "stress", *args, *RUN)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert live_counts(srv) == before  # nothing was sent


def test_the_api_runs_a_groups_test_in_the_server(srv: Server) -> None:
    headers = {"Authorization": srv.info["admin_token"]}
    api = srv.api_url
    options = {"mode": "manual", "qps": 50, "step_s": 2, "duration_s": 5}
    r = requests.post(f"{api}/api/v1/services/duo/stress", json={"options": options}, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        report = requests.get(f"{api}/api/v1/stress/{rid}", headers=headers, timeout=10).json()
        if report["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["status"] == "completed", report
    assert_breakdown(report)
    load = requests.get(f"{api}/api/v1/services/duo/load", headers=headers, timeout=10).json()
    assert load["kind"] == "group" and load["ready_replicas"] == 2
    html = requests.get(f"{api}/api/v1/stress/{rid}/html", headers=headers, timeout=10).text
    assert "<h2>By member</h2>" in html
