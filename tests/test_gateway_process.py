"""The gateway as a process, and replicas killed with SIGKILL under load."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest_gateway import LoopThread, MemorySource, free_port, route, start_gateway, table
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
REPLICA = (
    "import sys; from aiohttp import web; from tests.conftest_gateway import upstream_app; "
    "web.run_app(upstream_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), "
    "print=None, access_log=None)"
)


def wait_http(port: int, path: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on :{port}{path}")
        time.sleep(0.05)


def start_replica(name: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", REPLICA, name, str(port)], cwd=ROOT)
    wait_http(port, "/ready")
    return proc


@pytest.fixture
def replicas() -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    procs = []
    for name in ("A", "B"):
        port = free_port()
        procs.append((start_replica(name, port), port))
    yield procs
    for p, _ in procs:
        p.kill()
        p.wait()


def test_sigkill_of_one_replica_under_load_fails_no_request(
    replicas: list[tuple[subprocess.Popen[bytes], int]],
) -> None:
    lt = LoopThread()
    # The table keeps listing the killed replica: the control plane has not noticed yet.
    gw = lt.run(start_gateway(MemorySource(table(route("svc", [p for _, p in replicas])))))
    stop = threading.Event()
    ok = [0]
    failures: list[str] = []

    def client() -> None:
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        while not stop.is_set():
            try:
                c.request("POST", "/api/predict/svc/x", body=b"payload")
                r = c.getresponse()
                body = r.read()
                if r.status == 200:
                    ok[0] += 1
                else:
                    failures.append(f"{r.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: ok[0] >= 50, 15, poll_s=0.01, what="the first 50 answers")
        replicas[0][0].kill()  # SIGKILL
        before = ok[0]
        wait_for(lambda: ok[0] >= before + 100, 15, poll_s=0.01, what="100 answers after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join()
    lt.run(gw.stop(grace_s=1))
    lt.stop()
    assert ok[0] > 100
    assert failures == []


def test_entry_point_serves_and_exits_with_its_parent(tmp_path: Path) -> None:
    rport, gport = free_port(), free_port()
    replica = start_replica("A", rport)
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(table(route("svc", [rport], token="t")).to_dict()))
    parent = subprocess.Popen(["sleep", "60"])
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openeas.gateway",
            "--port",
            str(gport),
            "--routing-file",
            str(routing),
            "--parent-pid",
            str(parent.pid),
        ],
        cwd=ROOT,
    )
    try:
        wait_http(gport, "/healthz")
        c = http.client.HTTPConnection("127.0.0.1", gport, timeout=5)
        c.request("GET", "/api/predict/svc/p", headers={"Authorization": "Bearer t"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["path_qs"] == "/p"
        # The routing file changes: the gateway picks it up within a poll interval.
        routing.write_text(json.dumps(table(route("svc2", [rport]), version=2).to_dict()))
        deadline = time.monotonic() + 5
        while True:
            c.request("GET", "/api/predict/svc2/q")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        c.close()
        parent.kill()
        parent.wait()
        assert gw.wait(10) == 0
    finally:
        for p in (gw, parent, replica):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_entry_point_sigterm_is_graceful(tmp_path: Path) -> None:
    gport = free_port()
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(table().to_dict()))
    gw = subprocess.Popen(
        [sys.executable, "-m", "openeas.gateway", "--port", str(gport), "--routing-file", str(routing)],
        cwd=ROOT,
    )
    try:
        wait_http(gport, "/healthz")
        os.kill(gw.pid, signal.SIGTERM)
        assert gw.wait(10) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()


def test_entry_point_limit_flags_reach_the_gateway(tmp_path: Path) -> None:
    gport = free_port()
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(table().to_dict()))
    gw = subprocess.Popen(
        [sys.executable, "-m", "openeas.gateway", "--port", str(gport), "--routing-file", str(routing),
         "--max-url-bytes", "300", "--max-headers", "7", "--head-timeout", "2.5", "--max-connections", "50"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        wait_http(gport, "/healthz")
        conn = http.client.HTTPConnection("127.0.0.1", gport, timeout=10)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        for name, value in (("max_url_bytes", "300"), ("max_headers", "7"), ("head_timeout_s", "2.5"),
                            ("max_connections", "50")):  # fmt: skip
            assert f'openeas_gateway_limit{{name="{name}"}} {value}\n' in metrics
        conn = http.client.HTTPConnection("127.0.0.1", gport, timeout=10)
        conn.request("GET", "/api/predict/x/" + "a" * 400)
        assert conn.getresponse().status == 414  # over the flag's 300 bytes, under the default 8 KiB
    finally:
        gw.terminate()
        gw.wait(10)
