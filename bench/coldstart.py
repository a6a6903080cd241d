"""Cold start: the node cache's goals (issue 23; docs/cold-start.md).

- A model's fetch phase on a hit against a miss (goal: a 250 MB model's hit ≤ 1% of its miss).
- N replicas starting at once on one node (goal: 10 starts, 1 fetch).

The fetch phase is what a replica's start spends in ``NodeCache.materialize`` (the supervisor's
"Fetching" phase runs exactly that); the model is a generated file in a local bucket, the cache a
fresh folder per run. Prints a markdown table with each goal's verdict.

    python bench/coldstart.py                      # 250 MB, 10 starts, 3 runs
    python bench/coldstart.py --size-mb 4 --starts 3 --runs 1   # the smoke form
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openeas.storage import Materialized, NodeCache

CHUNK = 1 << 20


def make_model(bucket: Path, size_mb: int) -> Path:
    model = bucket / "model"
    model.mkdir(parents=True)
    block = os.urandom(CHUNK)
    with open(model / "weights.bin", "wb") as f:
        for _ in range(size_mb):
            f.write(block)
    (model / "config.json").write_text('{"arch": "bench"}')
    return model


def hit_vs_miss(model: Path, work: Path, run: int) -> tuple[float, float]:
    cache = NodeCache(work / f"hm-{run}")
    miss = cache.materialize(str(model))
    hit = cache.materialize(str(model))
    assert not miss.hit and hit.hit
    return miss.seconds, hit.seconds


def starts_at_once(model: Path, work: Path, run: int, starts: int) -> tuple[int, float]:
    cache = NodeCache(work / f"flight-{run}")
    barrier = threading.Barrier(starts)

    def start(_: int) -> Materialized:
        barrier.wait()
        return cache.materialize(str(model))

    t0 = time.monotonic()
    with ThreadPoolExecutor(starts) as pool:
        got = list(pool.map(start, range(starts)))
    return sum(not g.hit for g in got), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=250, help="model size, MiB (1-2048)")
    ap.add_argument("--starts", type=int, default=10, help="replicas starting at once (1-20)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each measurement (1-10)")
    a = ap.parse_args()
    errors = [
        f"--{name}: {value} is not in {lo}..{hi}"
        for name, value, lo, hi in (
            ("size-mb", a.size_mb, 1, 2048),
            ("starts", a.starts, 1, 20),
            ("runs", a.runs, 1, 10),
        )
        if not lo <= value <= hi
    ]
    if errors:
        ap.error("; ".join(errors))
    with tempfile.TemporaryDirectory(prefix="openeas-coldstart-") as tmp:
        work = Path(tmp)
        model = make_model(work / "bucket", a.size_mb)
        pairs = [hit_vs_miss(model, work, r) for r in range(a.runs)]
        flights = [starts_at_once(model, work, r, a.starts) for r in range(a.runs)]
    miss = statistics.median(p[0] for p in pairs)
    hit = statistics.median(p[1] for p in pairs)
    ratio = hit / miss if miss else 0.0
    fetches = max(f[0] for f in flights)
    wall = statistics.median(f[1] for f in flights)
    print(f"# cold start: node cache ({a.size_mb} MiB model, {a.runs} runs, medians)\n")
    print("| measure | value | goal | verdict |")
    print("|---|---|---|---|")
    print(f"| fetch phase, miss | {miss * 1000:.1f} ms | | |")
    print(f"| fetch phase, hit | {hit * 1000:.2f} ms | | |")
    ok_ratio = "PASS" if ratio <= 0.01 else "FAIL"
    print(f"| hit / miss | {ratio:.2%} | ≤ 1% | {ok_ratio} |")
    ok_flight = "PASS" if fetches == 1 else "FAIL"
    print(f"| {a.starts} starts at once: fetches (worst run) | {fetches} | 1 | {ok_flight} |")
    print(f"| {a.starts} starts at once: wall time | {wall * 1000:.1f} ms | | |")


if __name__ == "__main__":
    main()
