"""What one proxied request costs the gateway against nginx, in measures that survive a shared
machine: ``python bench/gateway_cost.py [--duration 5] [--runs 3]``.

Static upstream (nginx, a fixed body), proxies pinned to core 1, wrk on core 0 (as
``bench/gateway.py``); for each proxy, per request: user and system CPU µs (/proc/<pid>/stat).
The issue's goal: the gateway at most 1.3x nginx's CPU per request, static upstream. On a
shared machine absolute figures drift with the load; ``--baseline REV`` runs the gateway of
another revision beside this tree's, interleaved in the same run, so a hot-path change is
compared with its predecessor under the same noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import anchors  # noqa: E402
from bench.gateway import CLK_TCK, TOKEN, WRK, Bench, bench_dir  # noqa: E402

GOAL_CPU = 1.3  # the gateway's CPU per request over nginx's (issue 21, static upstream)


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids`` so far."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def measure(url: str, headers: list[str], pids: list[int], duration: float) -> tuple[float, float]:
    """(user µs, system µs) per request of ``pids`` under wrk -t2 -c32."""
    u0, s0 = cpu_split(pids)
    args = ["taskset", "-c", "0", WRK, "-t2", "-c32", f"-d{duration:g}s"]
    for h in headers:
        args += ["-H", h]
    run = subprocess.run([*args, url], capture_output=True, text=True, timeout=duration + 30, check=True)
    out = run.stdout
    u1, s1 = cpu_split(pids)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return (u1 - u0) / total * 1e6, (s1 - s0) / total * 1e6


def with_timeout(tmp: Path, timeout_s: float) -> None:
    """Every gateway's route gets ``timeout_s`` (the routing files are re-read within 0.2 s)."""
    for f in tmp.glob("routing-*.json"):
        table = json.loads(f.read_text())
        table["version"] += 1
        table["routes"]["bench"]["timeout_s"] = timeout_s
        f.write_text(json.dumps(table))
    time.sleep(1.0)


def baseline_gateway(b: Bench, up_port: int, rev: str) -> tuple[int, list[int]]:
    """The gateway of revision ``rev`` (``git archive``: its src/), from the same routing file."""
    src = b.tmp / "baseline"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    port, pids = b.gateway(up_port, "baseline", env={**os.environ, "PYTHONPATH": str(src / "src")})
    return port, pids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=3, help="runs per proxy, interleaved; medians shown")
    ap.add_argument(
        "--route-timeout",
        type=float,
        metavar="S",
        help="the route timeout_s (an EAS spec: metadata.rpc.keepalive / 1000): a 408 deadline per request",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the gateway of git revision REV (its src/ only) beside this tree's: an A/B of a "
        "hot-path change in one run, the same noise on both",
    )
    args = ap.parse_args()
    anchors.tool("nginx", "/usr/sbin/nginx")
    anchors.tool("wrk", "/usr/bin/wrk")
    with bench_dir() as tmp:
        b = Bench(tmp)
        try:
            _, up_port, path = b.static_upstream()
            nginx_port, nginx_pids = b.nginx_proxy(up_port, "cost")
            gw_port, gw_pids = b.gateway(up_port, "cost")
            auth = [f"Authorization: Bearer {TOKEN}"]
            setups = {
                "nginx": (f"http://127.0.0.1:{nginx_port}{path}", [], nginx_pids),
                "openeas gateway": (f"http://127.0.0.1:{gw_port}/api/predict/bench{path}", auth, gw_pids),
            }
            if args.baseline:
                base_port, base_pids = baseline_gateway(b, up_port, args.baseline)
                url = f"http://127.0.0.1:{base_port}/api/predict/bench{path}"
                setups[f"openeas gateway at {args.baseline}"] = (url, auth, base_pids)
            if args.route_timeout:
                with_timeout(tmp, args.route_timeout)
            for url, headers, pids in setups.values():  # warm up
                measure(url, headers, pids, 1.0)
            res: dict[str, list[tuple[float, float]]] = {k: [] for k in setups}
            for i in range(args.runs):
                for name, (url, headers, pids) in setups.items():
                    r = measure(url, headers, pids, args.duration)
                    res[name].append(r)
                    print(
                        f"[{i + 1}/{args.runs}] {name:34} user {r[0]:.2f} µs  sys {r[1]:.2f} µs", flush=True
                    )
        finally:
            b.close()
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(2)) for k, v in res.items()}
    ng, gw = med["nginx"], med["openeas gateway"]
    print(f"\nstatic upstream, wrk -t2 -c32 -d{args.duration:g}s, median of {args.runs}; proxies on core 1\n")
    print("| proxy | user µs/req | system µs/req | CPU µs/req | CPU vs nginx |")
    print("|---|---|---|---|---|")
    for name, (u, s) in med.items():
        print(f"| {name} | {u:.2f} | {s:.2f} | {u + s:.2f} | {(u + s) / (ng[0] + ng[1]):.2f}x |")
    ratio = (gw[0] + gw[1]) / (ng[0] + ng[1])
    verdict = "MEETS" if ratio <= GOAL_CPU else "MISSES"
    print(f"\nverdict: gateway CPU per request = {ratio:.2f}x nginx's; goal <= {GOAL_CPU}x: {verdict}")


if __name__ == "__main__":
    main()
