"""Scale from zero at the gateway: ``python bench/activator.py [--trials 40] [--runs 5] [--duration 5]``.

1. **Release latency.** A request to a service with no routable replica is held by a real gateway
   process reading a real store; then a replica (a running ``openeas.testserver``) is marked
   Ready in the store. Measured: from that commit to the held request's answer at the client.
   Anchors: the same with the gateway polling the store every 0.2 s and no push (the wiring
   before routing pushes), and a request sent straight to the replica over a new connection (the
   floor: the released request also opens a new connection to it).
2. **Stats sampling cost.** The time the gateway's loop spends building one datagram, and the
   throughput of the gateway (pinned to core 1; wrk on core 0, 32 connections; upstream: nginx
   serving a fixed body, so the gateway is the bottleneck) with its per-service counters sent
   every 0.2 s to a bound receiver (50 services in the table) vs not sent (the anchor). Runs
   alternate on/off; the table shows medians. Goal: ratio >= 0.98.

Every process listens on 127.0.0.1 only and every load run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # shared helpers live in bench/ and tests/

from bench import anchors  # noqa: E402
from bench.gateway import NGINX, Result, median, nginx_conf, wait_http, wrk  # noqa: E402
from tests.conftest_gateway import free_port  # noqa: E402
from tests.routing_harness import TOKEN, percentile, spec  # noqa: E402

from openeas.gateway.routing.notify import RoutingNotifier  # noqa: E402
from openeas.gateway.routing.notify import socket_path as notify_socket  # noqa: E402
from openeas.gateway.telemetry.metrics import GatewayMetrics  # noqa: E402
from openeas.gateway.telemetry.stats import samples  # noqa: E402
from openeas.store import Store  # noqa: E402
from openeas.telemetry.gateway_stats import GatewayStats, encode, receive  # noqa: E402

GET_PATH = "/v1/models"


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def pinned(core: int, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args] if (os.cpu_count() or 1) >= 2 else args


def status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.002)


def held_now(gw_port: int, service: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = re.search(rf'^openeas_gateway_held_requests{{service="{service}"}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


# --- 1. release latency ---------------------------------------------------------------------------


def release_latencies(trials: int, *, push: bool, replica_port: int, procs: Procs) -> list[float]:
    """Seconds from the commit that makes a replica routable to a held request's answer."""
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="openeas-bench-") as d:
        data = Path(d)
        store = Store(data)
        if push:
            store.add_routing_listener(RoutingNotifier(notify_socket(data)))
        gw_port = free_port()
        poll = "60" if push else "0.2"  # push: the poll is out of the way; else it is all there is
        gw = procs.spawn(
            [
                sys.executable,
                "-m",
                "openeas.gateway",
                "--port",
                str(gw_port),
                "--data-dir",
                d,
                "--poll-interval",
                poll,
                "--no-stats",
            ]
        )
        wait_http(gw_port, "/healthz")
        rng = random.Random(1)
        for i in range(trials):
            out.append(one_release(store, gw_port, f"svc{i}", replica_port, rng))
        gw.terminate()
        gw.wait(15)
    return out


def one_release(store: Store, gw_port: int, name: str, replica_port: int, rng: random.Random) -> float:
    store.create_service(spec(name))
    wait_until(lambda: status(gw_port, f"/api/predict/{name}") == 401, 10, f"{name} routed")
    answered: list[float] = []

    def client() -> None:
        c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
        c.request("GET", f"/api/predict/{name}{GET_PATH}", headers={"Authorization": TOKEN})
        r = c.getresponse()
        r.read()
        answered.append(time.perf_counter())
        assert r.status == 200, r.status
        c.close()

    t = threading.Thread(target=client)
    t.start()
    wait_until(lambda: held_now(gw_port, name) == 1, 10, f"{name} held")
    rid = store.add_replica(name, 1, workdir_root=store.data_dir / "replicas").id
    store.update_replica(rid, phase="Starting", port=replica_port)  # not routable yet
    store.update_replica(rid, phase="Warming")
    # The gateway's poll (the anchor's only path) is in phase with the wait above: spread the
    # commit over the 0.2 s poll period so the anchor samples its phase, not its worst case.
    time.sleep(rng.uniform(0, 0.2))
    committed = time.perf_counter()
    store.update_replica(rid, phase="Ready")  # routable: the commit the clock starts at
    t.join(30)
    store.update_service(name, state="Deleting")
    return answered[0] - committed


def direct_latencies(trials: int, replica_port: int) -> list[float]:
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        assert status(replica_port, GET_PATH) == 200
        out.append(time.perf_counter() - t0)
    return out


# --- 2. stats sampling cost -------------------------------------------------------------------------


class Receiver:
    """A control plane's receiver (GatewayStats + receive) on a thread of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.stats = GatewayStats(time.monotonic)
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(receive(data_dir, self.stats, self.stop), self.loop)

    def arrivals(self, service: str) -> int:
        async def read() -> int:
            s = self.stats.current(service, self.stats.clock())
            return s.arrivals if s else 0

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.task.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def stats_throughput(
    runs: int, duration: float, procs: Procs, tmp: Path
) -> tuple[dict[str, list[Result]], int]:
    """wrk results per mode ("off", "on") and the arrivals the receiver counted."""
    up_port = free_port()
    conf = nginx_conf(
        tmp,
        "static",
        f"""server {{ listen 127.0.0.1:{up_port};
    location / {{ default_type application/json; return 200 '{{"ok":true,"model":"bench"}}'; }} }}""",
    )
    procs.spawn([NGINX, "-c", str(conf), "-p", str(conf.parent)])
    wait_http(up_port, "/")
    routes = {
        "bench": {"token": TOKEN, "upstreams": [{"replica_id": "r0", "host": "127.0.0.1", "port": up_port}]}
    }
    routes.update({f"idle{i:02d}": {"token": TOKEN, "upstreams": []} for i in range(49)})
    routing = tmp / "routing.json"
    routing.write_text(json.dumps({"version": 1, "routes": routes}))
    cp_dir = tmp / "cp"
    receiver = Receiver(cp_dir)
    ports: dict[str, int] = {}
    pids: dict[str, list[int]] = {}
    for mode, flags in (
        ("off", ["--no-stats"]),
        ("on", ["--stats-socket", str(cp_dir / "run" / "control.sock")]),
    ):
        port = ports[mode] = free_port()
        gw = procs.spawn(
            pinned(
                1,
                [
                    sys.executable,
                    "-m",
                    "openeas.gateway",
                    "--port",
                    str(port),
                    "--routing-file",
                    str(routing),
                    *flags,
                ],
            )
        )
        pids[mode] = [gw.pid]  # taskset execs the gateway: same pid
        wait_http(port, "/api/predict/bench", {"Authorization": f"Bearer {TOKEN}"})
    results: dict[str, list[Result]] = {"off": [], "on": []}
    headers = [f"Authorization: Bearer {TOKEN}"]
    for mode in ("off", "on"):  # warm up
        wrk(f"http://127.0.0.1:{ports[mode]}/api/predict/bench/", 2.0, 32, headers, [])
    for r in range(runs):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            res = wrk(f"http://127.0.0.1:{ports[mode]}/api/predict/bench/", duration, 32, headers, pids[mode])
            if res.errors:
                raise SystemExit(f"{res.errors} errors with stats {mode}")
            results[mode].append(res)
    time.sleep(0.5)  # one more sample
    seen = receiver.arrivals("bench")
    receiver.close()
    return results, seen


def sample_cost(services: int, n: int = 5000) -> float:
    """Seconds the gateway's loop spends building one datagram (the send itself is one syscall)."""
    metrics = GatewayMetrics()
    for i in range(services):
        metrics.service(f"service{i:02d}").latency_count = 123_456
    t0 = time.perf_counter()
    for _ in range(n):
        encode("12345-0123456789ab", 12.3, samples(metrics))
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40, help="held requests released per mode")
    ap.add_argument("--runs", type=int, default=5, help="wrk runs per stats mode (alternating)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    procs = Procs()
    try:
        replica_port = free_port()
        procs.spawn([sys.executable, "-m", "openeas.testserver", "--port", str(replica_port)])
        wait_http(replica_port, "/health")
        push = release_latencies(args.trials, push=True, replica_port=replica_port, procs=procs)
        poll = release_latencies(args.trials, push=False, replica_port=replica_port, procs=procs)
        direct = direct_latencies(args.trials, replica_port)
        print(f"\nrelease of a held request after its replica turns routable ({args.trials} trials each)")
        print(f"{'setup':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 vs push':>12}")
        base = percentile(push, 0.5)
        for label, xs in (
            ("push (the server's wiring)", push),
            ("anchor: poll-only 0.2 s, no push", poll),
            ("anchor: direct request to the replica", direct),
        ):
            p50 = percentile(xs, 0.5)
            print(
                f"{label:<44} {p50 * 1e3:8.2f} {percentile(xs, 0.99) * 1e3:8.2f} {max(xs) * 1e3:8.2f} "
                f"{p50 / base:11.2f}x"
            )
        per_sample = sample_cost(services=50)
        print(
            f"\nsampling cost: {per_sample * 1e6:.1f} us per datagram of 50 services (sample + encode), "
            f"{per_sample * 5 * 100:.3f}% of a core at 5 per second: expected throughput ratio "
            f"{1 - per_sample * 5:.4f}"
        )
        if args.skip_throughput:
            return
        anchors.tool("nginx", "/usr/sbin/nginx")
        anchors.tool("wrk", "/usr/bin/wrk")
        with tempfile.TemporaryDirectory(prefix="openeas-bench-") as d:
            results, seen = stats_throughput(args.runs, args.duration, procs, Path(d))
        med = {mode: median(rs) for mode, rs in results.items()}
        base_rps, base_cpu = med["off"].rps, med["off"].cpu_per_10k or 1.0
        print(f"\ngateway throughput, stats sampling on vs off ({args.runs} x {args.duration:g} s, medians)")
        print(f"{'setup':<40} {'req/s':>8} {'ratio':>6} {'CPU s/10k':>10} {'ratio':>6}  req/s of each run")
        for mode, label in (
            ("off", "anchor: stats off (--no-stats)"),
            ("on", "stats on (every 0.2 s, 50 services)"),
        ):
            m = med[mode]
            cpu = m.cpu_per_10k or 0.0
            runs = " ".join(f"{r.rps:.0f}" for r in results[mode])
            print(
                f"{label:<40} {m.rps:8.0f} {m.rps / base_rps:6.3f} {cpu:10.3f} {cpu / base_cpu:6.3f}  {runs}"
            )
        print(f"(the receiver counted {seen} arrivals for the loaded service)")
    finally:
        procs.close()


if __name__ == "__main__":
    main()
