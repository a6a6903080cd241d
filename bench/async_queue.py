"""Async queue: ``python bench/async_queue.py [--duration 5] [--count 300] [--no-anchors]``.

Side by side, in one run, every process on 127.0.0.1 and every load stopping by itself:

1. **Durable enqueues per second through the gateway**, small JSON bodies POSTed to an async
   service of a real ``openeas server``; each ``200`` is sent only after the request is durable.
   The service is stopped, so nothing is dispatched: the gateway and its queue are measured
   alone. On the SQLite queue (WAL, ``synchronous=FULL``, group commits) and on the Redis queue
   (a ``redis-server`` with ``appendfsync always``, the durable setting). Two client shapes:
   ``wrk`` (64 connections from 2 C threads, core 0: the gateway's ceiling) and **the same shape
   as Celery's publisher**: ``PRODUCERS`` (8) threads of one Python process, one request in
   flight each (``http.client``, keep-alive), for ``--duration`` seconds.
2. **Celery's ``apply_async``** against the same ``redis-server`` (the queue most Python teams
   would pick instead): publishing ``--duration`` seconds from the same 8 threads of one process,
   Celery installed in a virtualenv of its own (``.bench/celery``, made by ``bench/anchors.sh``;
   the run stops if it is missing, unless ``--no-anchors``). The ratio to Celery is given for the
   like-for-like shape; the wrk row says it is not.
3. **Durable means it survives**: after both enqueue runs on a backend, the gateway is killed
   with SIGKILL and the queue is read back (the product's own backend, opened from the bench):
   every request id the Python producers were answered ``200`` for is looked up, and every 2xx
   wrk counted is compared with the requests queued. Lost = accepted and not found (goal: 0).
4. **Async round-trip overhead**: ``--count`` sequential requests, each a ``POST`` then a
   long-polling ``GET .../sink?requestId=…&_timeout_=5s`` until the result, against a sync call
   of the same test-server replica through the same gateway. Overhead = p50(async) - p50(sync).

Goals (issue 10): >= 5,000 durable enqueues/s on SQLite, >= 2x Celery's enqueue rate, p50
overhead <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e tests)

from bench import anchors  # noqa: E402
from tests.harness import Server, kill_gateway, new_server, replica_processes, service_spec  # noqa: E402

from openeas.queue.base import open_backend  # noqa: E402
from openeas.runtime import free_port  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
RID = "X-Eas-Queueservice-Request-Id"
PRODUCERS = 8  # threads of one process, one request in flight each: Celery's publisher shape
BODY = '{"prompt": "hello", "max_tokens": 8}'


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
    deadline = time.monotonic() + 60  # a loaded machine starts it slowly
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


@dataclass
class Enqueues:
    """One enqueue run: its rate, and what it was answered."""

    rps: float
    accepted: int  # answered 2xx
    failed: int  # answered otherwise
    p50_ms: float
    ids: list[str]  # request ids answered 200 (the Python producers record them; wrk does not)


def wrk_post(url: str, token: str, duration: float, conns: int = 64) -> Enqueues:
    """wrk POSTing a small JSON body from ``conns`` connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n"
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
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(m.group(1)) if m else 0
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M)
    assert p50 is not None
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return Enqueues(rps, total - bad, bad, float(p50.group(1)) * scale, [])


def python_post(url: str, token: str, duration: float, threads: int = PRODUCERS) -> Enqueues:
    """``threads`` threads of this process POSTing the same body for ``duration`` seconds, one
    request in flight each on a keep-alive connection; the request ids answered 200 are kept."""
    host, _, rest = url.removeprefix("http://").partition("/")
    name, port = host.split(":")
    path = "/" + rest
    ids: list[list[str]] = [[] for _ in range(threads)]
    failed = [0] * threads
    times: list[list[float]] = [[] for _ in range(threads)]
    headers = {"Authorization": token, "Content-Type": "application/json"}
    start = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(name, int(port), timeout=30)
        start.wait()
        end = time.monotonic() + duration
        while (t0 := time.monotonic()) < end:
            conn.request("POST", path, body=BODY, headers=headers)
            r = conn.getresponse()
            r.read()
            rid = r.getheader(RID)
            if r.status == 200 and rid:
                ids[i].append(rid)
                times[i].append(time.monotonic() - t0)
            else:
                failed[i] += 1
        conn.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.monotonic()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    got = [rid for part in ids for rid in part]
    lat = [x for part in times for x in part]
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    return Enqueues(len(got) / elapsed, len(got), sum(failed), p50, got)


@dataclass
class Survival:
    """What the queue holds after the gateway was killed with SIGKILL."""

    ids_accepted: int  # request ids the Python producers were answered 200 for
    ids_found: int  # of those, found in the queue afterwards
    accepted: int  # every 2xx of every run on this server (wrk's warm-up and run, the producers)
    queued: int  # requests in the queue afterwards (nothing is dispatched: the service is stopped)

    @property
    def lost(self) -> int:
        return (self.ids_accepted - self.ids_found) + max(0, self.accepted - self.queued)


async def read_back(url: str | None, data_dir: Path, service: str, ids: list[str]) -> tuple[int, int]:
    """(ids found, requests queued) of ``service``'s queue, read with the product's backend."""
    backend = open_backend(url, data_dir)
    try:
        found = 0
        for rid in ids:
            state, _ = await backend.lookup(service, rid)
            found += state is not None
        attrs = await backend.attributes(service, 10_000_000, time.time())
        return found, attrs.queued + attrs.in_flight
    finally:
        await backend.close()


def enqueue_rate(tmp: Path, duration: float, queue_url: str | None) -> tuple[Enqueues, Enqueues, Survival]:
    """(wrk, Python producers, survival after kill -9 of the gateway) on one backend."""
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
        warm = wrk_post(url, token, 1.0)
        fast = wrk_post(url, token, duration)
        like = python_post(url, token, duration)
        kill_gateway(srv.data_dir)  # SIGKILL: whatever was answered 200 must be on disk
        found, queued = asyncio.run(read_back(queue_url, srv.data_dir, "bq", like.ids))
        accepted = warm.accepted + fast.accepted + like.accepted
        return fast, like, Survival(len(like.ids), found, accepted, queued)
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
producers = int(sys.argv[3])
counts = [0] * producers
infer.apply_async(({"prompt": "warm"},))
def run(i):
    end = time.monotonic() + duration
    n = 0
    while time.monotonic() < end:
        infer.apply_async(({"prompt": "hello", "max_tokens": 8},))
        n += 1
    counts[i] = n
threads = [threading.Thread(target=run, args=(i,)) for i in range(producers)]
t0 = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts) / (time.monotonic() - t0))
"""


def celery_rate(python: str, redis_port: int, duration: float) -> float:
    out = subprocess.run(
        [
            python,
            "-c",
            textwrap.dedent(CELERY),
            f"redis://127.0.0.1:{redis_port}/1",
            str(duration),
            str(PRODUCERS),
        ],
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
            r = call("GET", f"/api/predict/basync/sink?requestId={rid}&_timeout_=30s", async_token)
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
    report(sqlite, red, celery)
    lost = sqlite[2].lost + red[2].lost
    print(f"\n{'round trip (sequential, ms)':<44} {'p50':>9} {'p99':>10}")
    print(f"{'sync call through the gateway':<44} {rt[0]:>9.2f} {rt[1]:>10.2f}")
    print(f"{'async: POST + sink long-poll':<44} {rt[2]:>9.2f} {rt[3]:>10.2f}")
    print(f"{'overhead (async - sync)':<44} {rt[2] - rt[0]:>9.2f} {rt[3] - rt[1]:>10.2f}")
    if lost:
        raise SystemExit(f"{lost} accepted requests were not in the queue after kill -9 of the gateway")


Run = tuple[Enqueues, Enqueues, Survival]


def report(sqlite: Run, red: Run, celery: float | None) -> None:
    """The enqueue table (both client shapes) and the survival table."""
    wide = f"{'durable enqueue':<58} {'req/s':>9} {'vs Celery':>10} {'p50 ms':>8} {'non-2xx':>8}"
    print("\n" + wide)
    shape = f"{PRODUCERS} Python threads, 1 process"
    for backend, (fast, like, _) in (
        ("SQLite (synchronous=FULL)", sqlite),
        ("Redis (appendfsync always)", red),
    ):
        for label, e, same in (("wrk, 64 connections", fast, False), (shape, like, True)):
            ratio = (f"{e.rps / celery:.2f}x" if same else "not same") if celery else anchors.OFF
            name = f"gateway -> {backend}, {label}"
            print(f"{name:<58} {e.rps:>9.0f} {ratio:>10} {e.p50_ms:>8.2f} {e.failed:>8}")
    if celery:
        print(f"{'Celery apply_async -> same Redis, ' + shape:<58} {celery:>9.0f} {'1.00x':>10}")
    head = ("ids accepted", "ids found", "2xx", "queued", "lost")
    print(f"\n{'after kill -9 of the gateway':<30}" + "".join(f" {h:>12}" for h in head))
    for backend, (_, _, v) in (("SQLite", sqlite), ("Redis", red)):
        row = (v.ids_accepted, v.ids_found, v.accepted, v.queued, v.lost)
        print(f"{backend:<30}" + "".join(f" {x:>12}" for x in row))


if __name__ == "__main__":
    main()
