"""Gateway vs nginx vs direct, side by side: ``python bench/gateway.py [--duration 10] [--runs 3]``.

Two upstreams: (a) the built-in test server (``python -m openeas.testserver``; a small aiohttp
JSON app when that package is missing) and (b) nginx serving a fixed body (a very fast replica).
For each, wrk (pinned to core 0) drives: direct → upstream, nginx (1 worker, keepalive upstream
pool, pinned to core 1) → upstream, and the OpenEAS gateway (auth token checked, routing and
metrics on, pinned to core 1) → upstream, in two modes (``--mode``, both by default):

- **server**: the gateway as ``openeas server`` runs it: a real server on a data dir of its own,
  the upstream deployed as a service (its replica runs the same program as the direct upstream,
  started by the server), the routing table pushed from the store, the per-service counters sent
  to the control plane every 0.2 s and on jumps. The gateway process is pinned to core 1 once it
  runs; its CPU is the gateway's alone (the control plane's is not counted).
- **file**: a bare ``python -m openeas.gateway --routing-file`` (no store, no routing push, no
  stats datagram): the lower bound of what the gateway costs.

Proxy CPU comes from /proc/<pid>/stat. Every load run is bounded by ``--duration``; all traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.anchors and the rig in tests/, however this file was reached
from bench import anchors  # noqa: E402
from tests.harness import Server, kill_gateway, new_server, recorded_gateway_pid  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A hand-written model server: Python's http.server, keep-alive, a 50 ms handler, the head and the
# body in two sends without TCP_NODELAY (Nagle holds the body until the head is acknowledged).
NAGLE_UPSTREAM = (
    "import sys, time\n"
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_GET(self):\n"
    "        time.sleep(0.05)\n"
    "        body = b'{\"ok\": true}'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
NAGLE_RATE = 40.0  # requests per second, spread over NAGLE_CLIENTS keep-alive connections
NAGLE_CLIENTS = 4
AIOHTTP_UPSTREAM = (
    "import sys; from aiohttp import web\n"
    "async def ok(r): return web.json_response({'ok': True, 'model': 'bench'})\n"
    "app = web.Application(); app.router.add_route('*', '/{t:.*}', ok)\n"
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None, access_log=None)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing answers 200 on 127.0.0.1:{port}{path}")
        time.sleep(0.1)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def nginx_conf(tmp: Path, name: str, body: str, workers: int = 1) -> Path:
    d = tmp / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {body}
}}
"""
    )
    return conf


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    cpu_pids: list[int]


# The static upstream as a replica of `openeas server`: nginx with the same fixed body, on the
# replica's port ($PORT), its files in the replica's own work directory.
STATIC_REPLICA = """cat > nginx.conf <<END
daemon off;
worker_processes 1;
pid nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fcgi;
  uwsgi_temp_path uwsgi; scgi_temp_path scgi;
  server { listen 127.0.0.1:$PORT;
    location / { default_type application/json; return 200 '{"ok":true,"model":"bench"}'; } }
}
END
exec NGINX -e stderr -p "$PWD/" -c "$PWD/nginx.conf"
"""


def upstream_spec(kind: str) -> dict[str, object]:
    """The service `openeas server` deploys for an upstream of kind ``aiohttp`` or ``static``."""
    health = {"http_get": {"path": "/"}, "period_seconds": 1}
    container: dict[str, object] = {"port": 8000, "health_check": health}
    if kind == "static":
        container["script"] = STATIC_REPLICA.replace("NGINX", NGINX)
    else:
        container["command"] = "python -m openeas.testserver --host 127.0.0.1 --port 8000"
    return {"metadata": {"name": "bench", "instance": 1, "cpu": 1}, "containers": [container]}


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[Server] = []

    def spawn(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def close(self) -> None:
        for srv in self.servers:
            srv.stop()
            kill_gateway(srv.data_dir)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    # --- upstreams --------------------------------------------------------------------------------
    def aiohttp_upstream(self) -> tuple[str, int, str]:
        port = free_port()
        if importlib.util.find_spec("openeas.testserver") is not None:
            self.spawn([sys.executable, "-m", "openeas.testserver", "--port", str(port)])
            label = "openeas.testserver"
        else:
            self.spawn([sys.executable, "-c", AIOHTTP_UPSTREAM, str(port)])
            label = "aiohttp.web JSON"
        wait_http(port, "/")
        return label, port, "/"

    def nagle_upstream(self) -> tuple[str, int, str]:
        port = free_port()
        self.spawn([sys.executable, "-c", NAGLE_UPSTREAM, str(port)])
        wait_http(port, "/")
        return "http.server, 50 ms, head and body in two sends", port, "/"

    def static_upstream(self, workers: int = 1, cpus: str | None = None) -> tuple[str, int, str]:
        port = free_port()
        conf = nginx_conf(
            self.tmp,
            f"static-{workers}",
            f"""server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{{"ok":true,"model":"bench"}}'; }} }}""",
            workers,
        )
        pin = ["taskset", "-c", cpus] if cpus else []
        self.spawn([*pin, NGINX, "-c", str(conf), "-p", str(conf.parent)])
        wait_http(port, "/")
        return "nginx static body", port, "/"

    # --- proxies ----------------------------------------------------------------------------------
    def nginx_proxy(self, up_port: int, tag: str, workers: int = 1, cpus: str = "1") -> tuple[int, list[int]]:
        port = free_port()
        conf = nginx_conf(
            self.tmp,
            f"proxy-{tag}",
            f"""upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
            workers,
        )
        p = self.spawn(["taskset", "-c", cpus, NGINX, "-c", str(conf), "-p", str(conf.parent)])
        wait_http(port, "/")
        while len(children(p.pid)) < workers:  # nginx's master forks them after it listens
            time.sleep(0.05)
        return port, [p.pid, *children(p.pid)]

    def gateway(
        self, up_port: int, tag: str, env: dict[str, str] | None = None, workers: int = 1, cpus: str = "1"
    ) -> tuple[int, list[int]]:
        """A bare gateway from a routing file on ``cpus``, as ``workers`` processes (1: no supervisor)."""
        port = free_port()
        routing = self.tmp / f"routing-{tag}.json"
        route = {"token": TOKEN, "upstreams": [{"replica_id": "r0", "host": "127.0.0.1", "port": up_port}]}
        routing.write_text(json.dumps({"version": 1, "routes": {"bench": route}}))
        argv = [sys.executable, "-m", "openeas.gateway", "--port", str(port), "--routing-file", str(routing)]
        more = ["--workers", str(workers)] if workers > 1 else []
        p = self.spawn(["taskset", "-c", cpus, *argv, *more], env=env)
        while workers > 1 and len(children(p.pid)) < workers:
            time.sleep(0.05)
        wait_http(port, "/api/predict/bench", {"Authorization": f"Bearer {TOKEN}"})
        return port, [p.pid, *children(p.pid)]

    def server_gateway(self, kind: str) -> tuple[int, list[int], str, int]:
        """(gateway port, gateway pids, token, replica port) of a real `openeas server` serving
        the upstream of ``kind`` as service ``bench``; the gateway pinned to core 1."""
        srv = new_server(self.tmp / f"server-{kind}" / "data")
        self.servers.append(srv)
        srv.start()
        c = srv.client
        c.deploy(upstream_spec(kind))
        c.wait_ready("bench", 1, timeout_s=120)
        token = str(c.call_info("bench")["token"])
        pid = recorded_gateway_pid(srv.data_dir)
        if pid is None:
            raise SystemExit("openeas server runs no gateway process (DATA/run/gateway.json)")
        pids = [pid, *children(pid)]
        for p in pids:
            subprocess.run(["taskset", "-a", "-p", "-c", "1", str(p)], capture_output=True, check=True)
        port = int(srv.gateway_url.rsplit(":", 1)[1])
        wait_http(port, "/api/predict/bench/", {"Authorization": f"Bearer {token}"})
        replica_port = int(c.describe("bench")["replicas"][0]["port"])
        return port, pids, token, replica_port


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_per_10k: float | None
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    url: str, duration: float, conns: int, headers: list[str], cpu_pids: list[int], cpus: str = "0"
) -> Result:
    """wrk on ``cpus`` (core 0 by default); the CPU of ``cpu_pids`` per request."""
    args = ["taskset", "-c", cpus, WRK, f"-t{min(2, conns)}", f"-c{conns}", f"-d{duration:g}s", "--latency"]
    args += ["--timeout", "5s"]
    for h in headers:
        args += ["-H", h]
    before = cpu_seconds(cpu_pids) if cpu_pids else 0.0
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    after = cpu_seconds(cpu_pids) if cpu_pids else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    cpu = (after - before) / total * 10_000 if cpu_pids and total else None
    return Result(rps, p50, p99, cpu, errors)


def median(results: list[Result]) -> Result:
    cpus = [r.cpu_per_10k for r in results if r.cpu_per_10k is not None]
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(cpus) if cpus else None,
        sum(r.errors for r in results),
    )


def paced(port: int, path: str, headers: dict[str, str], duration: float) -> Result:
    """``NAGLE_RATE`` req/s on ``NAGLE_CLIENTS`` keep-alive connections, each at its own pace
    (a request every NAGLE_CLIENTS / NAGLE_RATE s, or at once when it fell behind); latencies."""
    import threading

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    interval = NAGLE_CLIENTS / NAGLE_RATE
    end = time.monotonic() + duration

    def run(offset: float) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        due = time.monotonic() + offset
        while due < end:
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.perf_counter()
            try:
                c.request("GET", path, headers=headers)
                # The client acknowledges at once: the hop under test is the proxy's, not ours.
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                c.close()
            took = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(took * 1000)
                else:
                    errors[0] += 1
            due += interval
        c.close()

    threads = [
        threading.Thread(target=run, args=(i * interval / NAGLE_CLIENTS,)) for i in range(NAGLE_CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    n = len(latencies)
    if not n:
        return Result(0.0, 0.0, 0.0, None, errors[0])
    return Result(n / duration, latencies[n // 2], latencies[min(n - 1, int(n * 0.99))], None, errors[0])


def nagle_pass(b: Bench, duration: float, runs: int) -> dict[str, Result]:
    """p50 of a replica that needs the proxy's ACK between its head and its body: direct, nginx
    (keep-alive upstream), the gateway."""
    label, up_port, path = b.nagle_upstream()
    nginx_port, _ = b.nginx_proxy(up_port, "nagle")
    gw_port, _ = b.gateway(up_port, "nagle")
    setups = {
        "direct": (up_port, path, {}),
        "nginx": (nginx_port, path, {}),
        "openeas gateway": (gw_port, f"/api/predict/bench{path}", {"Authorization": f"Bearer {TOKEN}"}),
    }
    res: dict[str, list[Result]] = {k: [] for k in setups}
    for i in range(runs):
        for name, (port, p, headers) in setups.items():
            r = paced(port, p, headers, duration)
            res[name].append(r)
            print(
                f"[nagle {i + 1}/{runs}] {name:16} p50 {r.p50_ms:.1f} ms"
                f"  p99 {r.p99_ms:.1f} ms  errors {r.errors}",
                flush=True,
            )
    print(
        f"\n{label}: {NAGLE_RATE:g} req/s on {NAGLE_CLIENTS} keep-alive connections,"
        f" {duration:g} s, median of {runs}\n"
    )
    print("| setup | p50 ms | p99 ms | added p50 vs direct |")
    print("|---|---|---|---|")
    med = {k: median(v) for k, v in res.items()}
    for name, r in med.items():
        added = f"{r.p50_ms - med['direct'].p50_ms:+.1f} ms" if name != "direct" else ""
        print(f"| {name} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {added} |")
    return med


@contextlib.contextmanager
def bench_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="openeas-bench-") as d:
        yield Path(d)


REPLICA_ROW = "direct (server's replica)"
SERVER_ROW = "gateway (openeas server)"
FILE_ROW = "gateway (routing file)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=3, help="runs per setup; the table shows medians")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", choices=["aiohttp", "static", "nagle", "workers"], help="one pass only")
    ap.add_argument("--workers", type=int, default=2, help="gateway workers of --only workers (vs 1, nginx)")
    ap.add_argument(
        "--nagle-duration",
        type=float,
        default=5.0,
        help="seconds per run of --only nagle (a replica that sends its head and body apart, paced)",
    )
    ap.add_argument(
        "--mode",
        choices=["both", "server", "file"],
        default="both",
        help="the gateway as `openeas server` runs it, from a routing file (the lower bound), or both",
    )
    ap.add_argument(
        "--latency-duration",
        type=float,
        default=5.0,
        help="seconds per run of the unloaded-latency pass (1 connection, no queueing); 0 skips it",
    )
    args = ap.parse_args()
    anchors.tool("nginx", "/usr/sbin/nginx")  # the anchor: every table row is compared with it
    anchors.tool("wrk", "/usr/bin/wrk")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: wrk on core 0, the proxy on core 1")
    if args.only == "workers":  # bench/gateway_workers.py: N gateway processes vs 1 vs nginx
        from bench.gateway_workers import workers_pass

        return workers_pass(args)
    if args.only == "nagle":
        with bench_dir() as tmp:
            b = Bench(tmp)
            try:
                nagle_pass(b, args.nagle_duration, args.runs)
            finally:
                b.close()
        return
    rows = []
    lat_rows: list[tuple[str, dict[str, Result]]] = []
    with bench_dir() as tmp:
        b = Bench(tmp)
        try:
            upstreams = []
            if args.only in (None, "aiohttp"):
                upstreams.append(("aiohttp", b.aiohttp_upstream()))
            if args.only in (None, "static"):
                upstreams.append(("static", b.static_upstream()))
            for tag, (label, up_port, path) in upstreams:
                nginx_port, nginx_pids = b.nginx_proxy(up_port, tag)
                setups = {
                    "direct": (f"http://127.0.0.1:{up_port}{path}", [], []),
                    "nginx": (f"http://127.0.0.1:{nginx_port}{path}", [], nginx_pids),
                }
                if args.mode in ("both", "server"):
                    srv_port, srv_pids, srv_token, replica_port = b.server_gateway(tag)
                    # The server's replica runs the same program as the direct upstream, but is
                    # another process: its own direct row tells the two apart.
                    setups[REPLICA_ROW] = (f"http://127.0.0.1:{replica_port}{path}", [], [])
                    setups[SERVER_ROW] = (
                        f"http://127.0.0.1:{srv_port}/api/predict/bench{path}",
                        [f"Authorization: Bearer {srv_token}"],
                        srv_pids,
                    )
                if args.mode in ("both", "file"):
                    gw_port, gw_pids = b.gateway(up_port, tag)
                    setups[FILE_ROW] = (
                        f"http://127.0.0.1:{gw_port}/api/predict/bench{path}",
                        [f"Authorization: Bearer {TOKEN}"],
                        gw_pids,
                    )
                results: dict[str, list[Result]] = {k: [] for k in setups}
                for url, headers, pids in setups.values():  # warm up pools, JITs, caches
                    wrk(url, 1, args.connections, headers, pids)
                for i in range(args.runs):
                    for name, (url, headers, pids) in setups.items():  # interleaved: drift hits all alike
                        r = wrk(url, args.duration, args.connections, headers, pids)
                        results[name].append(r)
                        print(
                            f"[{tag} {i + 1}/{args.runs}] {name:24} {r.rps:9.0f} req/s  p50 {r.p50_ms:.2f} ms"
                            f"  p99 {r.p99_ms:.2f} ms  cpu/10k {r.cpu_per_10k or 0:.3f} s  errors {r.errors}",
                            flush=True,
                        )
                med = {k: median(v) for k, v in results.items()}
                rows.append((label, med))
                if args.latency_duration > 0:
                    # One connection: each request waits for none other, so p50 is the hop itself.
                    lat: dict[str, list[Result]] = {k: [] for k in setups}
                    for i in range(args.runs):
                        for name, (url, headers, pids) in setups.items():
                            r = wrk(url, args.latency_duration, 1, headers, pids)
                            lat[name].append(r)
                            print(
                                f"[{tag} 1-conn {i + 1}/{args.runs}] {name:24} p50 {r.p50_ms * 1000:.0f} us"
                                f"  p99 {r.p99_ms * 1000:.0f} us",
                                flush=True,
                            )
                    lat_rows.append((label, {k: median(v) for k, v in lat.items()}))
        finally:
            b.close()
    print()
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration:g}s, median of {args.runs}; proxies pinned to core 1"
    )
    print()
    print(
        "| upstream | setup | req/s | p50 ms | p99 ms | CPU s/10k req "
        "| vs nginx: req/s | CPU | added p50 vs direct (server mode: vs its replica) | socket errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, med in rows:
        ng, direct = med["nginx"], med["direct"]
        for name, r in med.items():
            upstream = name.startswith("direct")
            ratio = f"{r.rps / ng.rps:.2f}x" if not upstream else ""
            cpu = f"{r.cpu_per_10k:.3f}" if r.cpu_per_10k is not None else ""
            cpu_ratio = (
                f"{r.cpu_per_10k / ng.cpu_per_10k:.2f}x"
                if r.cpu_per_10k is not None and ng.cpu_per_10k
                else ""
            )
            base = med.get(REPLICA_ROW, direct) if name == SERVER_ROW else direct
            added = f"{r.p50_ms - base.p50_ms:+.2f} ms" if not upstream else ""
            print(
                f"| {label} | {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu} | {ratio} "
                f"| {cpu_ratio} | {added} | {r.errors} |"
            )

    if lat_rows:
        print()
        print(f"unloaded latency: wrk -t1 -c1 -d{args.latency_duration:g}s, median of {args.runs}")
        print()
        print("| upstream | setup | p50 us | p99 us | added p50 vs direct |")
        print("|---|---|---|---|---|")
        for label, med in lat_rows:
            direct = med["direct"]
            for name, r in med.items():
                base = med.get(REPLICA_ROW, direct) if name == SERVER_ROW else direct
                added = f"{(r.p50_ms - base.p50_ms) * 1000:+.0f} us" if not name.startswith("direct") else ""
                print(f"| {label} | {name} | {r.p50_ms * 1000:.0f} | {r.p99_ms * 1000:.0f} | {added} |")


if __name__ == "__main__":
    main()
