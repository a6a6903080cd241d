"""What a service group costs the gateway: ``python bench/groups.py [--duration 5] [--runs 5]``.

One gateway process (pinned to core 1, a routing file) in front of nginx serving a fixed body
(a very fast replica, so the gateway is the bottleneck); wrk ``-t2 -c32`` pinned to core 0.
Setups, interleaved run by run so drift hits all alike, medians of ``--runs``:

- anchor: ``/api/predict/a``, the service directly (its token);
- group, one member: ``/api/predict/g1`` (weight 1000 on a);
- group 90/10: ``/api/predict/g2`` (the weighted pick between two members);
- group with 3 match rules that do not match, then 90/10 (the header scan);
- group 90/10 with a 5% mirror, and with a 50% mirror (a copy of those requests to a third member).

req/s and the gateway's CPU per 10k requests (utime+stime from /proc) against the anchor. All
traffic stays on 127.0.0.1; every run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # shared helpers live in bench/

from bench import anchors  # noqa: E402
from bench.gateway import Bench, Result, bench_dir, free_port, median, wait_http, wrk  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
GROUP_TOKEN = "bench-group-token-0123456789"


def routing(up_port: int) -> dict[str, object]:
    def route(name: str) -> dict[str, object]:
        return {
            "token": TOKEN,
            "upstreams": [{"replica_id": f"{name}-0", "host": "127.0.0.1", "port": up_port}],
        }

    def group(members: list[dict[str, object]]) -> dict[str, object]:
        return {"token": GROUP_TOKEN, "members": members}

    split = [{"service": "a", "weight": 900}, {"service": "b", "weight": 100}]
    rules = [
        {"service": "c", "match": {"headers": {"X-Tester": "internal"}}},
        {"service": "c", "match": {"user_agent": "^acme-app/2\\."}},
        {"service": "c", "match": {"region": ["eu-west"]}},
    ]
    # One member may appear once per group: the three rules go to three members of their own.
    rules = [{**r, "service": f"r{i}"} for i, r in enumerate(rules)]
    return {
        "version": 1,
        "routes": {name: route(name) for name in ("a", "b", "c", "r0", "r1", "r2")},
        "groups": {
            "g1": group([{"service": "a", "weight": 1000}]),
            "g2": group(split),
            "g3": group([*rules, *split]),
            "g4": group([*split, {"service": "c", "mirror_weight": 5}]),
            "g5": group([*split, {"service": "c", "mirror_weight": 50}]),
        },
    }


SETUPS = {
    "service a (anchor)": ("/api/predict/a/", TOKEN),
    "group, 1 member": ("/api/predict/g1/", GROUP_TOKEN),
    "group 90/10": ("/api/predict/g2/", GROUP_TOKEN),
    "group 90/10 + 3 rules": ("/api/predict/g3/", GROUP_TOKEN),
    "group 90/10 + mirror 5%": ("/api/predict/g4/", GROUP_TOKEN),
    "group 90/10 + mirror 50%": ("/api/predict/g5/", GROUP_TOKEN),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=5, help="runs per setup; the table shows medians")
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    anchors.tool("wrk", "/usr/bin/wrk")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: wrk on core 0, the gateway on core 1")
    with bench_dir() as tmp:
        b = Bench(tmp)
        try:
            _, up_port, _ = b.static_upstream()
            table = tmp / "routing.json"
            table.write_text(json.dumps(routing(up_port)))
            port = free_port()
            gw = b.spawn(
                ["taskset", "-c", "1", sys.executable, "-m", "openeas.gateway", "--port", str(port),
                 "--routing-file", str(table), "--no-stats"]
            )  # fmt: skip
            wait_http(port, "/api/predict/g2/", {"Authorization": f"Bearer {GROUP_TOKEN}"})
            results: dict[str, list[Result]] = {k: [] for k in SETUPS}
            for path, token in SETUPS.values():  # warm up pools and caches
                wrk(
                    f"http://127.0.0.1:{port}{path}",
                    1,
                    args.connections,
                    [f"Authorization: Bearer {token}"],
                    [gw.pid],
                )
            for i in range(args.runs):
                for name, (path, token) in SETUPS.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    r = wrk(
                        url, args.duration, args.connections, [f"Authorization: Bearer {token}"], [gw.pid]
                    )
                    results[name].append(r)
                    print(
                        f"[{i + 1}/{args.runs}] {name:26} {r.rps:9.0f} req/s  p50 {r.p50_ms:.2f} ms"
                        f"  p99 {r.p99_ms:.2f} ms  cpu/10k {r.cpu_per_10k or 0:.3f} s  errors {r.errors}",
                        flush=True,
                    )
        finally:
            b.close()
    med = {k: median(v) for k, v in results.items()}
    anchor = med["service a (anchor)"]
    print()
    print("| setup | req/s | p50 ms | p99 ms | CPU s/10k req | req/s vs service | CPU vs service | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in med.items():
        cpu = f"{r.cpu_per_10k:.3f}" if r.cpu_per_10k is not None else "-"
        cpu_ratio = (
            f"{r.cpu_per_10k / anchor.cpu_per_10k:.2f}x" if r.cpu_per_10k and anchor.cpu_per_10k else "-"
        )
        print(
            f"| {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu} | "
            f"{r.rps / anchor.rps:.2f}x | {cpu_ratio} | {r.errors} |"
        )


if __name__ == "__main__":
    main()
