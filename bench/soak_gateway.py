"""Soak the gateway with abusive clients: ``python bench/soak_gateway.py`` (stops by itself, ~1 min).

All traffic stays on 127.0.0.1. A gateway process (deadlines shortened so the run is short; the
limits are the defaults) proxies to a small aiohttp replica. Two parts:

(a) slow clients: normal clients measure their latency alone (the baseline), then again while
    ``--slow`` connections trickle request heads byte by byte or sit idle on keep-alive; every slow
    connection must be closed by its deadline, and the normal clients' p99 stay within 2x of the
    baseline.
(b) oversized requests: ``--oversized`` requests with long distinct URLs (accepted, and too long:
    414) and huge headers (431); the gateway's RSS must end within 20 MB of where it started.

The soft limit on open files is raised to the hard one first (the clients and the gateway each
hold every slow connection). Prints a table; ``--markdown`` prints it as a Markdown table too.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = (
    "import sys; from aiohttp import web\n"
    "async def ok(r): return web.json_response({'ok': True})\n"
    "app = web.Application(); app.router.add_route('*', '/{t:.*}', ok)\n"
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None, access_log=None)\n"
)
GATEWAY = """
import asyncio, sys
from openeas.gateway import Gateway
from openeas.kernel.routing import Route, RoutingTable, Upstream
from openeas.gateway.context import ProxyContext

class Once:
    def __init__(self, table): self.table = table
    def poll(self):
        table, self.table = self.table, None
        return table

async def main():
    up, head_s, keepalive_s, body_s = int(sys.argv[1]), *map(float, sys.argv[2:5])
    replica = Upstream(replica_id="r0", host="127.0.0.1", port=up)
    route = Route(service="soak", token=None, upstreams=(replica,))
    gw = Gateway(Once(RoutingTable(version=1, routes={"soak": route})), poll_interval_s=5.0)
    gw.ctx = ProxyContext(
        gw.metrics, head_timeout_s=head_s, keepalive_timeout_s=keepalive_s, body_timeout_s=body_s
    )
    print(await gw.start("127.0.0.1", 0), flush=True)
    await asyncio.Event().wait()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""
GET = b"GET /api/predict/soak/ping HTTP/1.1\r\nHost: soak\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def read_response(reader: asyncio.StreamReader) -> int:
    """One response (Content-Length framed); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return status


async def normal_clients(port: int, clients: int, seconds: float) -> list[float]:
    """Keep-alive clients sending GETs back to back; latencies in ms."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            t = time.perf_counter()
            writer.write(GET)
            assert await read_response(reader) == 200
            latencies.append((time.perf_counter() - t) * 1000)
        writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


async def slow_client(port: int, idle: bool, closed_after: list[float], trickle_s: float) -> None:
    """A trickling head (one byte every ``trickle_s``) or an idle keep-alive connection; records
    how long after its last byte the gateway closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    last = time.monotonic()
    try:
        if idle:
            writer.write(GET)
            await read_response(reader)
            last = time.monotonic()
            await reader.read()  # until the gateway closes it
        else:
            head = GET * 1000  # more than any deadline lets through
            read = asyncio.ensure_future(reader.read())
            for i in range(len(head)):
                if read.done():
                    break
                writer.write(head[i : i + 1])
                await asyncio.sleep(trickle_s)
            await read
    except ConnectionResetError:  # closed by the gateway with our unread byte in its buffer: RST
        pass
    closed_after.append(time.monotonic() - last)
    writer.close()


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else float("nan")


async def slow_part(port: int, args: argparse.Namespace) -> tuple[int, int, int, float]:
    """Opens the slow connections and waits for the gateway to close them: (closed, not closed,
    errors, the longest time from a connection's last byte to its close)."""
    closed_after: list[float] = []
    slow = []
    for i in range(args.slow):  # opened in steps: the listen backlog is 1024
        slow.append(asyncio.ensure_future(slow_client(port, i % 2 == 1, closed_after, args.trickle_s)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    limit = max(args.head_timeout_s, args.keepalive_timeout_s) + 10
    done, pending = await asyncio.wait(slow, timeout=limit)
    for task in pending:
        task.cancel()
    errors = sum(1 for t in done if t.exception() is not None)
    return len(closed_after), len(pending), errors, max(closed_after, default=float("nan"))


def slow_process(port: int, args: argparse.Namespace, out: multiprocessing.Queue[object]) -> None:
    out.put(asyncio.run(slow_part(port, args)))


async def part_a(port: int, args: argparse.Namespace) -> dict[str, float]:
    # The slow clients run in a process of their own: their work must not slow the normal
    # clients' own loop, only (if at all) the gateway.
    await normal_clients(port, args.clients, 1.0)  # warm up: connections to the replica, caches
    base = await normal_clients(port, args.clients, args.seconds)
    results: multiprocessing.Queue[object] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=slow_process, args=(port, args, results))
    proc.start()
    await asyncio.sleep(1.5)  # all of them open
    loaded = await normal_clients(port, args.clients, args.seconds)
    closed, not_closed, errors, closed_after_max_s = results.get()  # type: ignore[misc]
    proc.join()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    metrics = (await reader.read()).decode()
    writer.close()
    counted = {
        line.split('"')[1]: int(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("openeas_gateway_timeouts_total{")
    }
    return {
        "baseline_requests": len(base),
        "baseline_p50_ms": p(base, 0.5),
        "baseline_p99_ms": p(base, 0.99),
        "loaded_requests": len(loaded),
        "loaded_p50_ms": p(loaded, 0.5),
        "loaded_p99_ms": p(loaded, 0.99),
        "slow_opened": args.slow,
        "slow_closed_by_gateway": closed,
        "slow_not_closed": not_closed,
        "slow_errors": errors,
        "closed_after_max_s": closed_after_max_s,
        **{f"gateway_timeouts_{kind}": n for kind, n in sorted(counted.items())},
    }


async def oversized(port: int, i: int) -> int:
    kind = i % 3
    if kind == 0:  # long distinct URL under the limit: proxied
        url = b"/api/predict/soak/%d/" % i + b"u" * 7000
        data = b"GET " + url + b" HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    elif kind == 1:  # long distinct URL over the limit: 414
        data = b"GET /api/predict/soak/%d/" % i + b"u" * 16000 + b" HTTP/1.1\r\nHost: soak\r\n\r\n"
    else:  # a huge header: 431
        data = b"GET /api/predict/soak HTTP/1.1\r\nX-Big-%d: " % i + b"v" * 65536 + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await read_response(reader)
    except (ConnectionError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


async def part_b(port: int, pid: int, args: argparse.Namespace) -> dict[str, float]:
    await normal_clients(port, 4, 1.0)  # warm up: pools, caches, allocator
    start = rss_mb(pid)
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            status = await oversized(port, i)
            statuses[status] = statuses.get(status, 0) + 1

    order = list(range(args.oversized))
    random.shuffle(order)
    await asyncio.gather(*(one(i) for i in order))
    await asyncio.sleep(1.0)
    end = rss_mb(pid)
    out: dict[str, float] = {"rss_start_mb": start, "rss_end_mb": end, "rss_growth_mb": end - start}
    out.update({f"answers_{k}": v for k, v in sorted(statuses.items())})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow", type=int, default=3000, help="slow connections in part (a)")
    ap.add_argument("--clients", type=int, default=8, help="normal keep-alive clients")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per latency measurement")
    ap.add_argument("--trickle-s", type=float, default=1.0, help="seconds between two trickled bytes")
    ap.add_argument("--head-timeout-s", type=float, default=5.0)
    ap.add_argument("--keepalive-timeout-s", type=float, default=8.0)
    ap.add_argument("--body-timeout-s", type=float, default=5.0)
    ap.add_argument("--oversized", type=int, default=10_000, help="oversized requests in part (b)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="openeas-soak-"):
            up = free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up)], env=env))
            timeouts = [str(args.head_timeout_s), str(args.keepalive_timeout_s), str(args.body_timeout_s)]
            gw = subprocess.Popen(
                [sys.executable, "-c", GATEWAY, str(up), *timeouts], env=env, stdout=subprocess.PIPE
            )
            procs.append(gw)
            assert gw.stdout is not None
            port = int(gw.stdout.readline())
            time.sleep(1.0)  # the replica is up
            a = asyncio.run(part_a(port, args))
            b = asyncio.run(part_b(port, gw.pid, args))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    print(f"file limit {soft} -> {hard}; deadlines head {args.head_timeout_s:g} s, keep-alive "
          f"{args.keepalive_timeout_s:g} s, body {args.body_timeout_s:g} s; limits: the defaults")
    print(f"{'figure':32} value")
    for k, v in {**a, **b}.items():
        print(f"{k:32} {v:.2f}" if isinstance(v, float) else f"{k:32} {v}")
    ok_a = a["slow_closed_by_gateway"] == args.slow and a["loaded_p99_ms"] <= 2 * a["baseline_p99_ms"]
    ok_b = b["rss_growth_mb"] <= 20
    print(f"(a) slow clients: {'PASS' if ok_a else 'FAIL'}   (b) RSS: {'PASS' if ok_b else 'FAIL'}")
    return 0 if ok_a and ok_b else 1


if __name__ == "__main__":
    raise SystemExit(main())
