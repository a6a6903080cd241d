"""Cluster scale by simulation: a routing table of 10,000 replicas built and applied by a gateway.

``python bench/cluster.py [--replicas 10000] [--per-service 10] [--rounds 20]``

A real store (SQLite in a temporary data dir; PostgreSQL is not measured here yet) holds
``--replicas`` Ready replicas on 200 simulated nodes (``replicas.node``), ``--per-service`` per
service. Each round is one real routing change (a replica leaves routing, then comes back: two
commits that bump the store's routing version); a gateway (in this process, not listening)
reads the store with its own routing source and applies the table. Timed per round: the read
and build of the table (``source.poll()``) plus ``Gateway.apply``. The anchor, in the same run:
the same with a tenth of the replicas, to show how the cost grows.

Goal (issue 22): the table of 10,000 entries built and applied by a gateway in ≤ 50 ms.
``--ray-serve`` then runs the real-cluster comparison with Ray Serve (bench/cluster_rayserve.py:
time to 30 Ready replicas across 3 Ray nodes and a scale 1 → 10, both sides on one cluster).
Not here yet: the reconcile pass over 10,000 fake replicas and 20 gateways, store writes/s
during a 1,000-replica rollout (docs/scale.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openeas.gateway import Gateway
from openeas.gateway.routing.source import routing_source
from openeas.kernel.states import ReplicaPhase
from openeas.spec import parse_spec
from openeas.store import Store
from openeas.store.schema import ReplicaRow

GOAL_MS = 50.0  # the bound for a 10,000-entry table, read + build + apply
NODES = 200  # simulated nodes the replicas are spread over


def populate(store: Store, replicas: int, per_service: int) -> list[str]:
    """``replicas`` Ready replicas, ``per_service`` per service; their ids."""
    services = max(1, replicas // per_service)
    for i in range(services):
        spec = {
            "metadata": {"name": f"s{i:05d}", "instance": per_service},
            "containers": [{"command": "serve --port 8000", "port": 8000}],
            "token": f"token-{i:05d}-abcdef",
        }
        store.create_service(parse_spec(spec))
    now, ids = time.time(), []
    with store.session() as s:
        for n in range(replicas):
            rid = f"s{n % services:05d}-{n:08x}"
            ids.append(rid)
            s.add(ReplicaRow(id=rid, service=f"s{n % services:05d}", version=1, port=20000 + n % 40000,
                             node=f"node-{n % NODES:03d}", phase=ReplicaPhase.READY.value, phase_times={},
                             cold_start={}, created_at=now, updated_at=now))  # fmt: skip
    return ids


def measure(replicas: int, per_service: int, rounds: int, store_url: str | None) -> list[float]:
    """Milliseconds per round: the gateway's read + build of the table and its apply."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        data = Path(tmp)
        store = Store(data, url=store_url)
        t0 = time.perf_counter()
        ids = populate(store, replicas, per_service)
        store.update_replica(ids[0], phase=ReplicaPhase.DRAINING.value)  # a first bump after the bulk insert
        print(f"  {replicas} replicas stored in {time.perf_counter() - t0:.1f} s", flush=True)
        source = routing_source(data, store_url)
        gateway = Gateway(source)
        out: list[float] = []

        async def rounds_() -> None:
            first = source.poll()
            assert first is not None
            gateway.apply(first)
            table = first
            for r in range(rounds):
                store.update_replica(ids[r + 1], phase=ReplicaPhase.DRAINING.value)
                t = time.perf_counter()
                polled = source.poll()
                assert polled is not None
                gateway.apply(polled)
                out.append((time.perf_counter() - t) * 1000)
                table = polled
            routed = sum(len(route.upstreams) for route in table.routes.values())
            assert routed == replicas - rounds - 1, routed  # each round took one replica out

        asyncio.run(rounds_())
        source.close()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=10_000)
    p.add_argument("--per-service", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--ray-serve", action="store_true", help="then bench/cluster_rayserve.py (minutes)")
    args = p.parse_args()
    results = {}
    for n in (args.replicas // 10, args.replicas):
        print(f"{n} replicas (SQLite):", flush=True)
        ms = measure(n, args.per_service, args.rounds, None)
        results[n] = ms
        print(f"  read+build+apply: p50 {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms", flush=True)
    small, big = (statistics.median(results[n]) for n in sorted(results))
    worst = max(results[args.replicas])
    print(f"ratio {args.replicas} / {args.replicas // 10} replicas (p50): {big / small:.1f}x")
    verdict = "MET" if worst <= GOAL_MS else "MISSED"
    print(f"verdict: {verdict}: {args.replicas} entries read, built and applied in {worst:.1f} ms at worst "
          f"(goal ≤ {GOAL_MS:g} ms)")  # fmt: skip
    if args.ray_serve:  # the real-cluster comparison: its own file, run with its defaults
        rayserve = Path(__file__).with_name("cluster_rayserve.py")
        sys.exit(subprocess.run([sys.executable, str(rayserve)], check=False).returncode)
    sys.exit(0)


if __name__ == "__main__":
    main()
