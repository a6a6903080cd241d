"""Cluster scale by simulation (issue 22's internet-scale goals), one command, anchors in the run.

``python bench/cluster.py [--replicas 10000] [--per-service 10] [--rounds 20] [--only PART]``

A real store (SQLite in a temporary data dir, and a PostgreSQL server this command starts and
stops, as the tests do) holds ``--replicas`` Ready replicas on 200 simulated nodes
(``replicas.node``), ``--per-service`` per service. The anchor of every part, in the same run:
the same with a tenth of the replicas, to show how the cost grows.

- ``routing``: a gateway (in this process, not listening) reads the store with its own routing
  source and applies the table. Timed: the whole table read, built and applied (a gateway's
  start), and each of ``--rounds`` real routing changes read and applied (one replica leaves
  routing, one service's weight in a group changes: one commit each). Goal: ≤ 50 ms.
- ``reconcile``: one pass of the real reconciler over the replicas (a fake runtime; steady state,
  every replica supervised), with 20 gateways' replica reports merged. Goal: ≤ 1 s.
- ``rollout``: the store's writes per second on PostgreSQL while 1,000 replicas roll to a new
  version (the writes each start and stop makes, replayed by 8 threads), a gateway following;
  SQLite in the same run. The issue sets no bound: the figure is for docs/scale.md.

``--ray-serve`` then runs the real-cluster comparison with Ray Serve (bench/cluster_rayserve.py:
time to 30 Ready replicas across 3 Ray nodes and a scale 1 → 10, both sides on one cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_sim
from cluster_sim import fresh, populate, postgres, reconcile_passes, rollout_writes

from openeas.gateway import Gateway
from openeas.gateway.routing.source import routing_source
from openeas.kernel.states import ReplicaPhase
from openeas.spec.group import parse_group
from openeas.store import Store
from openeas.store.groups import GroupStore

GOAL_MS = 50.0  # the bound for a 10,000-entry table, read + build + apply
ROLLOUT_REPLICAS = 1000  # the rollout
ROLLOUT_WRITERS = 8  # supervisors writing at once


def routing(replicas: int, per_service: int, rounds: int, store_url: str | None) -> dict[str, list[float]]:
    """(``store_url``: None for SQLite, or a PostgreSQL server: a database of its own is made.)
    Milliseconds: the whole table read + built + applied ("full", three gateways' starts) and
    each change read + applied ("change")."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        data = Path(tmp)
        store_url = fresh(store_url)
        store = Store(data, url=store_url)
        ids = populate(store, replicas, per_service)
        groups = GroupStore(store)
        members = [{"service": "s00000", "weight": 50}, {"service": "s00001", "weight": 50}]
        groups.create(parse_group({"name": "g", "routes": members}))
        # "full_cpu": this process's CPU time of each "full" (the read's, the build's and the
        # apply's, not the database server's): steadier than wall time on a shared machine.
        out: dict[str, list[float]] = {"full": [], "change": [], "full_cpu": []}

        async def run() -> None:
            for start in range(3):
                source = routing_source(data, store_url)
                gateway = Gateway(source)
                # This process made the store and its 10,000 rows through SQLAlchemy: a full
                # collection of that heap (60-90 ms here) would otherwise fall in whichever start
                # happens to trigger it. A gateway process holds none of it; its own collections
                # of the table it builds stay in the timing.
                gc.collect()
                t, cpu = time.perf_counter(), time.process_time()
                table = source.poll()
                assert table is not None
                gateway.apply(table)
                out["full"].append((time.perf_counter() - t) * 1000)
                out["full_cpu"].append((time.process_time() - cpu) * 1000)
                if start < 2:
                    source.close()
            for r in range(rounds):
                if r % 2:
                    groups.change("g", weights={"s00000": r, "s00001": 100 - r})
                else:
                    store.update_replica(ids[r], phase=ReplicaPhase.DRAINING.value)
                t = time.perf_counter()
                polled = source.poll()
                assert polled is not None
                gateway.apply(polled)
                out["change"].append((time.perf_counter() - t) * 1000)
                table = polled
            routed = sum(len(route.upstreams) for route in table.routes.values())
            assert routed == replicas - (rounds + 1) // 2, routed  # each even round took one out
            assert source.reads["full"] == 1, source.reads  # every change was read as a change
            source.close()

        asyncio.run(run())
        store.engine.dispose()
        return out


def _ms(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms"


def run_routing(args: argparse.Namespace, backends: dict[str, str | None]) -> list[str]:
    verdicts = []
    for backend, url in backends.items():
        results = {}
        for n in (args.replicas // 10, args.replicas):
            ms = routing(n, args.per_service, args.rounds, url)
            results[n] = ms
            print(f"routing, {n} replicas ({backend}): whole table {_ms(ms['full'])} (CPU "
                  f"{_ms(ms['full_cpu'])}); a change {_ms(ms['change'])}", flush=True)  # fmt: skip
        big = results[args.replicas]
        for kind in ("full", "change"):
            small = statistics.median(results[args.replicas // 10][kind])
            print(f"  {kind}: {args.replicas} / {args.replicas // 10} replicas (p50): "
                  f"{statistics.median(big[kind]) / small:.1f}x", flush=True)  # fmt: skip
        worst_change, worst_full = max(big["change"]), max(big["full"])
        met = {k: "MET" if max(big[k]) <= GOAL_MS else "MISSED" for k in ("full", "change")}
        verdicts.append(f"routing ({backend}): a change read+built+applied in {worst_change:.1f} ms at "
                        f"worst: {met['change']}; the whole table (a gateway's start) {worst_full:.1f} ms "
                        f"at worst: {met['full']} (goal ≤ {GOAL_MS:g} ms)")  # fmt: skip
    return verdicts


def run_reconcile(args: argparse.Namespace, backends: dict[str, str | None]) -> list[str]:
    verdicts = []
    for backend, url in backends.items():
        worst = {}
        for n in (args.replicas // 10, args.replicas):
            first, *s = reconcile_passes(n, args.per_service, 3, url)
            worst[n] = max(s)
            print(f"reconcile pass, {n} replicas on {cluster_sim.NODES} nodes, {cluster_sim.GATEWAYS} "
                  f"gateways ({backend}): the first (every spec read and parsed) {first:.3f} s; then "
                  f"p50 {statistics.median(s):.3f} s, max {max(s):.3f} s", flush=True)  # fmt: skip
        w = worst[args.replicas]
        verdicts.append(f"reconcile ({backend}): a steady pass over {args.replicas} replicas {w:.3f} s "
                        f"at worst: {'MET' if w <= cluster_sim.RECONCILE_GOAL_S else 'MISSED'} "
                        f"(goal ≤ {cluster_sim.RECONCILE_GOAL_S:g} s; {worst[args.replicas // 10]:.3f} s for "
                        f"{args.replicas // 10})")  # fmt: skip
    return verdicts


def run_rollout(args: argparse.Namespace, backends: dict[str, str | None]) -> list[str]:
    verdicts = []
    for backend, url in sorted(backends.items(), key=lambda b: b[0] != "PostgreSQL"):  # SQLite: the anchor
        r = rollout_writes(args.rollout_replicas, args.per_service, ROLLOUT_WRITERS, url)
        print(f"rollout of {args.rollout_replicas} replicas ({backend}, {ROLLOUT_WRITERS} writers): "
              f"{r['writes']:.0f} writes in {r['seconds']:.1f} s = {r['writes_per_s']:.0f} writes/s, "
              f"{r['versions_per_s']:.0f} routing versions/s; the gateway read {r['gateway_reads']} times "
              f"({r['gateway_full_reads']} whole), p50 {r['gateway_read_p50_ms']:.1f} ms, "
              f"max {r['gateway_read_max_ms']:.1f} ms; replicas cut short by a store error: "
              f"{r['failed']} {r['first_failure']}", flush=True)  # fmt: skip
        verdicts.append(f"rollout ({backend}): {r['writes_per_s']:.0f} store writes/s, {r['failed']} of "
                        f"{args.rollout_replicas} replicas cut short by a store error (no bound set: "
                        f"docs/scale.md)")  # fmt: skip
    return verdicts


PARTS = {"routing": run_routing, "reconcile": run_reconcile, "rollout": run_rollout}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=10_000)
    p.add_argument("--per-service", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rollout-replicas", type=int, default=ROLLOUT_REPLICAS)
    p.add_argument("--only", choices=sorted(PARTS), action="append", help="a part (repeatable); default all")
    p.add_argument("--sqlite-only", action="store_true", help="no PostgreSQL (SQLite alone)")
    p.add_argument("--ray-serve", action="store_true", help="then bench/cluster_rayserve.py (minutes)")
    args = p.parse_args()
    verdicts: list[str] = []
    if args.sqlite_only:
        backends: dict[str, str | None] = {"SQLite": None}
        for name in args.only or sorted(PARTS):
            verdicts += PARTS[name](args, backends)
    else:
        with postgres() as url:
            backends = {"SQLite": None, "PostgreSQL": url}
            for name in args.only or PARTS:
                verdicts += PARTS[name](args, backends)
    for v in verdicts:
        print("verdict:", v)
    if args.ray_serve:  # the real-cluster comparison: its own file, run with its defaults
        rayserve = Path(__file__).with_name("cluster_rayserve.py")
        sys.exit(subprocess.run([sys.executable, str(rayserve)], check=False).returncode)


if __name__ == "__main__":
    main()
