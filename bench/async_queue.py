"""Async queue: ``python bench/async_queue.py [--duration 5] [--count 300] [--no-anchors]``.

Side by side, in one run, every process on 127.0.0.1 and every load stopping by itself:

1. **Durable enqueues per second through the gateway**: ``wrk`` (64 connections, core 0) POSTs
   small JSON bodies to an async service of a real ``openeas server``; each ``200`` is sent only
   after the request is durable. The service is stopped, so nothing is dispatched: the gateway
   and its queue are measured alone. On the SQLite queue (WAL, ``synchronous=FULL``, group
   commits) and on the Redis queue (a ``redis-server`` with ``appendfsync always``, the durable
   setting).
2. **Celery's ``apply_async``** against the same ``redis-server`` (the queue most Python teams
   would pick instead): publishing ``--duration`` seconds from 8 threads of one process, Celery
   installed in a virtualenv of its own (``.bench/celery``, made by ``bench/anchors.sh``; the run
   stops if it is missing, unless ``--no-anchors``).
3. **Async round-trip overhead**: ``--count`` sequential requests, each a ``POST`` then a
   long-polling ``GET .../sink?requestId=…&_timeout_=5s`` until the result, against a sync call
   of the same test-server replica through the same gateway. Overhead = p50(async) - p50(sync).

Goals (issue 10): >= 5,000 durable enqueues/s on SQLite, >= 2x Celery's enqueue rate, p50
overhead <= 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e tests)

from bench import anchors  # noqa: E402
from tests.harness import Server, kill_gateway, new_server, replica_processes, service_spec  # noqa: E402

from openeas.runtime import free_port  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
RID = "X-Eas-Queueservice-Request-Id"


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return proc, port


def stop_server(srv: Server) -> None:
    srv.stop()
    kill_gateway(srv.data_dir)
    for pid in replica_processes(srv.data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def async_spec(name: str, replicas: int = 1) -> dict:
    spec = service_spec(name, replicas=replicas)
    spec["metadata"]["type"] = "Async"
    spec["queue"] = {"source": {"max_length": 10_000_000}}
    return spec


def wrk_post(url: str, token: str, duration: float, conns: int = 64) -> tuple[float, int, float]:
    """(requests/s, non-2xx answers, p50 ms) of wrk POSTing a small JSON body."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\nwrk.body = \'{"prompt": "hello", "max_tokens": 8}\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "{token}"\n'
        )
        script = f.name
    try:
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "0",
                WRK,
                "-t2",
                f"-c{conns}",
                f"-d{duration:g}s",
                "--latency",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M)
    assert p50 is not None
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return rps, int(m.group(1)) if m else 0, float(p50.group(1)) * scale


def enqueue_rate(tmp: Path, duration: float, queue_url: str | None) -> tuple[float, int, float]:
    srv = new_server(tmp)
    if queue_url:
        srv.extra_env["OPENEAS_QUEUE_URL"] = queue_url
    srv.start()
    try:
        c = srv.client
        c.deploy(async_spec("bq"))
        c.wait_ready("bq", 1, timeout_s=60)
        c.stop("bq")  # accepts, dispatches nothing: the enqueue path alone
        token = c.call_info("bq")["token"]
        url = f"{srv.gateway_url}/api/predict/bq"
        wrk_post(url, token, 1.0)  # warm up
        return wrk_post(url, token, duration)
    finally:
        stop_server(srv)


CELERY = """
import sys, threading, time
from celery import Celery
app = Celery("bench", broker=sys.argv[1])
app.conf.broker_connection_retry_on_startup = True

@app.task
def infer(payload):
    return payload

duration = float(sys.argv[2])
counts = [0] * 8
infer.apply_async(({"prompt": "warm"},))
def run(i):
    end = time.monotonic() + duration
    n = 0
    while time.monotonic() < end:
        infer.apply_async(({"prompt": "hello", "max_tokens": 8},))
        n += 1
    counts[i] = n
threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
t0 = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts) / (time.monotonic() - t0))
"""


def celery_rate(python: str, redis_port: int, duration: float) -> float:
    out = subprocess.run(
        [python, "-c", textwrap.dedent(CELERY), f"redis://127.0.0.1:{redis_port}/1", str(duration)],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def round_trips(tmp: Path, count: int) -> tuple[float, float, float, float]:
    """(sync p50, sync p99, async p50, async p99) in ms."""
    srv = new_server(tmp).start()
    try:
        c = srv.client
        c.deploy(service_spec("bsync"))
        c.deploy(async_spec("basync"))
        c.wait_ready("bsync", 1, timeout_s=60)
        c.wait_ready("basync", 1, timeout_s=60)
        host, port = srv.gateway_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({"prompt": "hello"})

        def call(method: str, path: str, token: str, data: str | None = None) -> http.client.HTTPResponse:
            conn.request(
                method, path, body=data, headers={"Authorization": token, "Content-Type": "application/json"}
            )
            r = conn.getresponse()
            r.read()
            return r

        sync_token, async_token = c.call_info("bsync")["token"], c.call_info("basync")["token"]
        sync, asyn = [], []
        for i in range(count + 20):  # the first 20 warm up
            t0 = time.perf_counter()
            assert call("POST", "/api/predict/bsync/", sync_token, body).status == 200
            t1 = time.perf_counter()
            rid = call("POST", "/api/predict/basync/", async_token, body).getheader(RID)
            r = call("GET", f"/api/predict/basync/sink?requestId={rid}&_timeout_=5s", async_token)
            t2 = time.perf_counter()
            assert r.status == 200, r.status
            if i >= 20:
                sync.append((t1 - t0) * 1000)
                asyn.append((t2 - t1) * 1000)
        q = statistics.quantiles
        return (statistics.median(sync), q(sync, n=100)[98], statistics.median(asyn), q(asyn, n=100)[98])
    finally:
        stop_server(srv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of each enqueue run")
    ap.add_argument("--count", type=int, default=300, help="sequential round trips measured")
    anchors.add_flag(ap)
    args = ap.parse_args()
    anchors.tool("wrk", "/usr/bin/wrk")
    anchors.tool("redis-server")
    celery_python = None if args.no_anchors else anchors.venv_bin("celery")
    with tempfile.TemporaryDirectory(prefix="openeas-bench-queue-") as d:
        tmp = Path(d)
        redis, rport = start_redis(tmp)
        try:
            sqlite = enqueue_rate(tmp / "sqlite", args.duration, None)
            red = enqueue_rate(tmp / "redis", args.duration, f"redis://127.0.0.1:{rport}/0")
            celery = celery_rate(celery_python, rport, args.duration) if celery_python else None
        finally:
            redis.terminate()
            redis.wait(10)
        rt = round_trips(tmp / "rt", args.count)
    print(f"\n{'durable enqueue':<44} {'req/s':>9} {'vs Celery':>10} {'p50 ms':>8} {'non-2xx':>8}")
    for name, (rps, bad, p50) in (
        ("gateway -> SQLite queue (synchronous=FULL)", sqlite),
        ("gateway -> Redis queue (appendfsync always)", red),
    ):
        ratio = f"{rps / celery:.2f}x" if celery else anchors.OFF
        print(f"{name:<44} {rps:>9.0f} {ratio:>10} {p50:>8.2f} {bad:>8}")
    if celery:
        print(f"{'Celery apply_async -> same Redis (8 threads)':<44} {celery:>9.0f} {'1.00x':>10}")
    print(f"\n{'round trip (sequential, ms)':<44} {'p50':>9} {'p99':>10}")
    print(f"{'sync call through the gateway':<44} {rt[0]:>9.2f} {rt[1]:>10.2f}")
    print(f"{'async: POST + sink long-poll':<44} {rt[2]:>9.2f} {rt[3]:>10.2f}")
    print(f"{'overhead (async - sync)':<44} {rt[2] - rt[0]:>9.2f} {rt[3] - rt[1]:>10.2f}")


if __name__ == "__main__":
    main()
