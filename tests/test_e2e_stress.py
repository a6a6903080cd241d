"""The stress test end to end: a real server, test-server replicas of known capacity behind the
real gateway, the real CLI. 8 requests at once x 50 ms each = 160 req/s and 8 in flight per
replica: the saturation point found must be within 10% of that, for 1 and for 2 replicas."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import behaviour
from tests.harness import Server, new_server, service_spec, stop_and_reap, wait_for

pytestmark = pytest.mark.slow

CAPACITY = {"qps": 160.0, "concurrency": 8.0}  # per replica: 8 / 0.050 s
ARGS = "--latency-ms 50 --max-concurrency 8"
FAST = ["--step", "2", "--min-qps", "40", "--duration", "90"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:

    s = new_server(tmp_path_factory.mktemp("stress") / "data").start()
    for name, n in (("cap1", 1), ("cap2", 2)):
        s.client.deploy(service_spec(name, replicas=n, args=ARGS))
    for name, n in (("cap1", 1), ("cap2", 2)):
        s.client.wait_ready(name, n, timeout_s=60)
    yield s
    stop_and_reap(s)


def cli(srv: Server, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli", *args],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stress_json(srv: Server, *args: str) -> dict[str, Any]:
    r = cli(srv, "stress", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_capacity(report: dict[str, Any], replicas: int) -> None:
    sat = report["saturation"]
    assert sat["found"], report["end_reason"]
    assert sat["replicas"] == pytest.approx(replicas)
    assert sat["qps_per_replica"] == pytest.approx(CAPACITY["qps"], rel=0.10), sat
    assert sat["concurrency_per_replica"] == pytest.approx(CAPACITY["concurrency"], rel=0.10), sat


def test_one_replica_saturation_and_apply(srv: Server) -> None:
    report = stress_json(srv, "cap1", *FAST, "--apply")
    assert_capacity(report, 1)
    rec = report["recommendation"]
    # 70% of ~8 in flight
    assert rec["metric"] == "concurrent_requests" and rec["target"] == pytest.approx(5.6, rel=0.10)
    # kept in the store, listed
    listed = stress_json(srv, "ls")["reports"]
    assert report["id"] in [r["id"] for r in listed]
    # --apply: a new version whose spec carries the recommendation
    detail = srv.client.describe("cap1")
    assert detail["version"] == 2 == report["applied"]["version"]
    assert detail["spec"]["autoscaling"] == {
        "metric": "concurrent_requests",
        "target": rec["target"],
        "min_replicas": 1,
        "max_replicas": rec["max_replicas"],
    }


def test_two_replicas_saturation_and_observed_replicas(srv: Server) -> None:
    report = stress_json(srv, "cap2", *FAST, "--min-qps", "80")
    assert_capacity(report, 2)
    assert all(s["replicas"] == 2 for s in report["steps"])
    assert any(p["in_flight"] for p in report["timeline"])  # the gateway's in-flight, observed


def _served(srv: Server, name: str) -> int:
    """Work requests the service's replicas answered so far (their own /metrics)."""
    total = 0
    for r in srv.client.describe(name)["replicas"]:
        text = requests.get(f"http://127.0.0.1:{r['port']}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith('testserver_requests_total{endpoint="/"'):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "unknown service or group 'nosuch'"),
        (["cap2", "--data", "/nonexistent/reqs.jsonl"], "data.path: no such file"),
        (["cap2", "--min-qps", "100", "--max-qps", "10"], "optional.minQPS: 100 is above optional.maxQPS (10)"),
        (["cap2", "--mode", "scan", "--max-qps", "5000", "--qps-delta", "1", "--duration", "30"], "more than base.duration"),
        (["cap2", "--body", "{not json"], "--body: line 1 is not one JSON request"),
    ],
    ids=["unknown-service", "missing-data", "min-above-max", "impossible-scan", "body-not-json"],
)  # fmt: skip
def test_bad_input_is_refused_before_any_load(srv: Server, args: list[str], message: str) -> None:
    before = _served(srv, "cap2")
    r = cli(srv, "stress", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert _served(srv, "cap2") == before


def test_data_file_not_one_request_per_line(srv: Server, tmp_path: Path) -> None:
    data = tmp_path / "pretty.json"
    data.write_text(json.dumps({"prompt": "a", "max_tokens": 4}, indent=2))
    r = cli(srv, "stress", "cap2", "--data", str(data))
    assert r.returncode == 2 and "data.path: line 1 is not one JSON request" in r.stderr


def test_api_runs_a_bounded_test_in_the_server(srv: Server) -> None:
    behaviour.stress_in_the_server(srv.api_url, srv.info["admin_token"], "cap2")


def answered(srv: Server, service: str) -> float:
    """Requests the gateway answered for ``service`` (any status), from its /metrics."""
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    prefix = f'openeas_gateway_requests_total{{service="{service}",'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_ctrl_c_stops_and_keeps_a_partial_report(srv: Server) -> None:
    import signal

    before = answered(srv, "cap2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.cli", "stress", "cap2", "--mode", "manual", "--qps", "50",
         "--step", "2", "--duration", "60", "--json"],
        env=srv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Into the second step: more than the first step's 2 s x 50 requests/s answered.
    wait_for(lambda: answered(srv, "cap2") - before > 120, 30, poll_s=0.2, what="the second step")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10  # stops at once, waits at most 5 s for answers in flight
    report = json.loads(out)
    assert report["status"] == "interrupted" and report["end_reason"] == "interrupted"
    assert 1 <= len(report["steps"]) < 30 and report["requests"] > 0
    stored = stress_json(srv, "show", report["id"])
    assert stored["status"] == "interrupted" and stored["steps"] == report["steps"]
