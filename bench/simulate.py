"""The simulator's speed: a business-hours trace at 1 s resolution through the real decide().

    python bench/simulate.py [--days 30]

Prints the CPU seconds (one core, ``time.process_time``) of the simulation alone and with the
trace's generation, and the result. The issue's bar: 30 days in ≤ 10 s (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time

from openeas.autoscaler.simulate import generate, shape_rates, simulate
from openeas.spec import parse_spec

SPEC = {
    "metadata": {"name": "bench", "instance": 2},
    "containers": [{"image": "x", "command": "x", "port": 8000}],
    "autoscaling": {"metric": "qps", "target": 10, "min_replicas": 1, "max_replicas": 10},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    t0 = time.process_time()
    trace = generate(shape_rates("business-hours", args.days, 20.0, 2.0), 0.1)
    t1 = time.process_time()
    result = simulate(
        parse_spec(SPEC), trace, cold_starts_s=[30.0], capacity_qps=12.0, price_per_hour=5.0, currency="RMB"
    )
    t2 = time.process_time()
    print(f"{args.days} days at 1 s: simulation {t2 - t1:.2f} s CPU, with the trace {t2 - t0:.2f} s")
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    main()
