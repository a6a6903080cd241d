"""End to end, one server for the module: what happens to requests and replicas over time.

Requests held until a replica is Ready, the request timeout (`metadata.rpc.keepalive`) before and
after the answer started, restarts after a startup timeout and after a replica turns unhealthy,
and SIGKILL after the grace period. Real server, real replica processes (the built-in test
server), real HTTP through the gateway; processes are checked with the test's own /proc scan.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.testserver import Knobs, ServerThread
from tests.harness import (
    Server,
    alive,
    event,
    group_members,
    reasons,
    replica_in_flight,
    service_spec,
    wait_for,
)


def _replica(srv: Server, name: str) -> dict[str, Any] | None:
    reps = srv.client.describe(name)["replicas"]
    return reps[0] if reps else None


def _gateway_count(srv: Server, name: str, code: int) -> float:
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'openeas_gateway_requests_total{{service="{name}",code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


def _in_flight(srv: Server, name: str) -> float:
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'openeas_gateway_in_flight_requests{{service="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


# A replica that has imported everything and waits for a file before it listens: the test decides
# when it becomes ready, and the start after that is quick (no interpreter start-up left).
GATED_REPLICA = """\
import os, sys, time
from openeas.testserver.__main__ import main
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(main(["--host", "127.0.0.1"]))  # the port comes from $PORT, the replica's port
"""


def test_request_sent_while_the_only_replica_starts_is_held_and_answered(shared_server: Server, tmp_path: Path):
    srv, c = shared_server, shared_server.client
    script, go = tmp_path / "gated.py", tmp_path / "go"
    script.write_text(GATED_REPLICA)
    spec = service_spec("held", token="held-token-123456")
    spec["containers"][0]["command"] = f"python {script} {go}"
    c.deploy(spec)
    wait_for(lambda: (r := _replica(srv, "held")) is not None and r["phase"] == "Starting" and r["pid"], 30,
             what="the replica process started, not listening")  # fmt: skip
    result: dict[str, Any] = {}

    def call() -> None:
        t0 = time.monotonic()
        r = requests.post(
            f"{srv.gateway_url}/api/predict/held/v1/completions",
            json={"prompt": "hi", "max_tokens": 2},
            headers={"Authorization": "held-token-123456"},
            timeout=30,
        )
        result.update(status=r.status_code, body=r.json(), took=time.monotonic() - t0)

    t = threading.Thread(target=call)
    t.start()
    # The request is in the gateway, held: no replica is Ready yet.
    wait_for(lambda: _in_flight(srv, "held") == 1, 10, what="the request held in the gateway")
    rep = _replica(srv, "held")
    assert rep is not None and rep["phase"] == "Starting"
    go.touch()  # now the replica listens, passes its probe and turns Ready
    t.join(30)
    assert result["status"] == 200, result
    assert result["body"]["object"] == "text_completion"
    rep = _replica(srv, "held")
    assert rep is not None and rep["phase"] == "Ready"
    assert _gateway_count(srv, "held", 200) == 1 and _gateway_count(srv, "held", 503) == 0


@pytest.mark.parametrize(
    ("stream", "outcome"),
    [
        # 20 tokens at 4 tokens/s take 5 s; the service's request timeout is 1 s.
        # Nothing of the answer was sent yet: a 408 with a JSON body.
        pytest.param(False, "408", id="nothing-sent-gets-408"),
        # Streamed: the 200 head and the first tokens are already with the client; a 408 can
        # no longer be sent, so the connection is closed mid-body. Metrics count a 408.
        pytest.param(True, "cut", id="head-sent-connection-closed"),
    ],
)
def test_request_timeout_keepalive(shared_server: Server, stream: bool, outcome: str):
    srv, c = shared_server, shared_server.client
    name = f"slow_{outcome}"
    spec = service_spec(name, args="--tokens-per-s 4")
    spec["metadata"]["rpc"] = {"keepalive": 1000}
    c.deploy(spec)
    c.wait_ready(name, 1, timeout_s=60)
    token = c.call_info(name)["token"]
    t0 = time.monotonic()
    r = requests.post(
        f"{srv.gateway_url}/api/predict/{name}/v1/completions",
        json={"prompt": "hi", "max_tokens": 20, "stream": stream},
        headers={"Authorization": token},
        stream=True,
        timeout=30,
    )
    if outcome == "408":
        took = time.monotonic() - t0
        assert r.status_code == 408
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"]["code"] == "timeout"
    else:
        assert r.status_code == 200  # the head came before the timeout
        body, cut = b"", False
        try:
            for chunk in r.iter_content(None):
                body += chunk
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
            cut = True
        took = time.monotonic() - t0
        assert cut, body  # not a complete chunked body
        assert b"data: " in body and b"[DONE]" not in body
    assert 1.0 <= took < 4.0, took  # at the timeout, not at the end of the 5 s answer
    wait_for(lambda: _gateway_count(srv, name, 408) == 1, 5, what="the gateway counting a 408")
    assert _gateway_count(srv, name, 200) == 0


def test_startup_timeout_restarts_the_replica(shared_server: Server):
    srv, c = shared_server, shared_server.client
    spec = service_spec("never_ready")
    # The test server answers 404 on /nope: never ready; a 1 s startup timeout gives up on it.
    spec["containers"][0]["health_check"] = {"http_get": {"path": "/nope"}, "startup_timeout_seconds": 1}
    c.deploy(spec)
    first = wait_for(lambda: (r := _replica(srv, "never_ready")) and r["pid"] and r, 30, what="first start")
    # The backoff is waited out in Failed, saying so.
    failed = wait_for(
        lambda: (r := _replica(srv, "never_ready")) and r["phase"] == "Failed" and "restarting" in (r["message"] or "") and r,
        30,
        what="Failed, restarting",
    )
    assert failed["message"] == (
        "restarting in 1s (restart 1): not ready within the startup deadline of 1 s "
        "(health_check.startup_timeout_seconds; raise it if the model needs longer): HTTP 404 from /nope"
    )
    assert event(srv, "never_ready", "StartupTimeout") is not None
    again = wait_for(
        lambda: (r := _replica(srv, "never_ready")) and r["pid"] and r["pid"] != first["pid"] and r, 30,
        what="the restart",
    )
    assert again["restart_count"] >= 1 and again["id"] == first["id"]
    assert not alive(first["pid"])  # the timed-out process was stopped, not left behind
    assert reasons(srv, "never_ready").count("Restarting") >= 1
    c.scale("never_ready", 0)


def _seed_ok_then_failing(failures: int) -> int:
    """A seed with which the test server answers its first request on / and fails the next ones:
    found by asking the test server itself (the knob's contract: same seed, same failures)."""
    for seed in range(1000):
        with ServerThread(Knobs(failure_rate=0.5, seed=seed)) as ts:
            codes = [requests.get(ts.url + "/", timeout=5).status_code for _ in range(failures + 1)]
        if codes == [200] + [500] * failures:
            return seed
    raise AssertionError("no such seed")


def test_unhealthy_replica_is_restarted(shared_server: Server):
    srv, c = shared_server, shared_server.client
    seed = _seed_ok_then_failing(2)
    # Probes on / are the only requests: the first passes (Ready), the next two fail.
    spec = service_spec("flaky", args=f"--failure-rate 0.5 --seed {seed}")
    spec["containers"][0]["health_check"] = {"http_get": {"path": "/"}, "period_seconds": 0.2, "failure_threshold": 2}
    c.deploy(spec)
    unhealthy = wait_for(lambda: event(srv, "flaky", "Unhealthy"), 30, what="an Unhealthy event")
    assert unhealthy["message"] == "health_check failed 2 times: HTTP 500 from /"
    assert reasons(srv, "flaky").index("Ready") < reasons(srv, "flaky").index("Unhealthy")
    wait_for(lambda: len(_started_pids(srv, "flaky")) >= 2, 30, what="a second start")
    first, second = _started_pids(srv, "flaky")[:2]
    assert first != second and not alive(first)  # a new process; the unhealthy one was stopped
    rep = _replica(srv, "flaky")
    assert rep is not None and rep["restart_count"] >= 1
    assert "Restarting" in reasons(srv, "flaky")
    c.scale("flaky", 0)


def _started_pids(srv: Server, name: str) -> list[int]:
    """Pids from the "Started" events ("process N listening on port P"), oldest first."""
    return [int(e["message"].split()[1]) for e in srv.client.events(name, limit=10_000) if e["reason"] == "Started"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(
            "python -m openeas.testserver --host 127.0.0.1 --port 8000", "terminated", id="exits-on-sigterm"
        ),
        # The shell's helper ignores SIGTERM (and keeps the replica's process group alive).
        pytest.param(
            "trap '' TERM; sleep 600 & exec python -m openeas.testserver --host 127.0.0.1 --port 8000",
            "killed",
            id="ignores-sigterm",
        ),
    ],
)
def test_stop_sends_sigkill_after_the_grace_period(shared_server: Server, command: str, expected: str):
    srv, c = shared_server, shared_server.client
    name = f"grace_{expected}"
    spec = service_spec(name)
    spec["containers"][0]["command"] = command
    spec["metadata"]["eas"]["termination_grace_period"] = 1
    c.deploy(spec)
    rep = c.wait_ready(name, 1, timeout_s=60)["replicas"][0]
    group = group_members(rep["pid"])
    assert len(group) == (2 if expected == "killed" else 1), group
    c.scale(name, 0)
    stopped = wait_for(lambda: event(srv, name, "Stopped"), 30, what="the replica stopped")
    assert stopped["message"] == f"process {rep['pid']} {expected}"
    assert not any(alive(pid) for pid in group)  # the whole group is gone, SIGTERM-proof helper too
    if expected == "killed":
        scaled = event(srv, name, "Scaled")
        assert scaled is not None
        waited = _seconds_between(scaled["time"], stopped["time"])
        assert waited >= 1.0, waited  # SIGKILL only after the 1 s grace period


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


@pytest.mark.parametrize(
    ("resend", "status"),
    [
        # The replica working on the request is killed before it answered a byte.
        pytest.param(None, 200, id="default-resent-to-the-other-replica"),
        pytest.param(True, 200, id="true-resent-to-the-other-replica"),
        pytest.param(False, 502, id="false-502-the-client-decides"),
    ],
)
def test_request_dropped_unanswered_is_resent_per_service(shared_server: Server, resend: bool | None, status: int):
    srv, c = shared_server, shared_server.client
    name = {None: "resend_default", True: "resend_true", False: "resend_false"}[resend]
    spec = service_spec(name, replicas=2, args="--latency-ms 1500")
    if resend is not None:
        spec["metadata"]["rpc"] = {"resend_unanswered": resend}
    c.deploy(spec)
    replicas = c.wait_ready(name, 2, timeout_s=60)["replicas"]
    token = c.call_info(name)["token"]
    result: dict[str, Any] = {}

    def call() -> None:
        r = requests.post(
            f"{srv.gateway_url}/api/predict/{name}/v1/completions",
            json={"prompt": "hi", "max_tokens": 1},
            headers={"Authorization": token},
            timeout=30,
        )
        result.update(status=r.status_code, body=r.json())

    t = threading.Thread(target=call)
    t.start()
    # The replica that has the request (it read it: it is inside its handler) is killed.
    working = wait_for(
        lambda: next((r for r in replicas if replica_in_flight(r["port"]) == 1), None), 10,
        what="a replica working on the request",
    )
    os.kill(working["pid"], signal.SIGKILL)
    t.join(30)
    assert result["status"] == status, result
    if status == 200:
        assert result["body"]["object"] == "text_completion"  # answered by the other replica
    else:
        assert result["body"]["error"]["code"] == "upstream_failed"
    c.scale(name, 0)
