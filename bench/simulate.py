"""The simulator's speed: a business-hours trace at 1 s resolution through the real decide().

    python bench/simulate.py [--days 30]

Prints the CPU seconds (one core, ``time.process_time``) of the simulation of a ``--days`` trace
with a qps policy, with the field guide's cron rules on top (croniter is asked only when a
decision passes a rule's next firing), and of an async service on its backlog (its queue), next
to the anchor run in the same process: ``decide()`` alone, called as many times with a fixed
context (the floor of any simulator that calls the real decide once per decision). Verdict
against the issue's bar: 30 days in ≤ 10 s on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from openeas.autoscaler.policy import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.autoscaler.simulate import DECIDE_EVERY_S, generate, shape_rates, simulate
from openeas.spec import parse_spec

GOAL_S = 10.0  # CPU seconds for 30 days
AUTOSCALING: dict[str, Any] = {"metric": "qps", "target": 10, "min_replicas": 1, "max_replicas": 10}
RULES = [
    {"name": "business-hours", "cron": "0 9 * * MON-FRI", "min_replicas": 3, "max_replicas": 10},
    {"name": "off-hours", "cron": "0 18 * * MON-FRI", "min_replicas": 1, "max_replicas": 5},
    {"name": "weekends", "cron": "0 0 * * SAT,SUN", "min_replicas": 1, "max_replicas": 3},
]


def spec(metadata: dict[str, Any] | None = None, **extra: Any) -> Any:
    return parse_spec(
        {
            "metadata": {"name": "bench", "instance": 2, **(metadata or {})},
            "containers": [{"image": "x", "command": "x", "port": 8000}],
            "autoscaling": {**AUTOSCALING, **extra},
        }
    )


def anchor(decisions: int) -> float:
    """CPU seconds of ``decisions`` bare decide() calls (state threaded through, as a loop does)."""
    policy = spec().autoscaling_policy()
    assert policy is not None
    obs = {"qps": Observation(12.0, 12.0)}
    state = PolicyState()
    t0 = time.process_time()
    for k in range(decisions):
        now = k * DECIDE_EVERY_S
        ctx = DecisionContext(policy, now, 1.7e9 + now, 2, 2, obs, Traffic(12.0, 1.2, 0), state)
        _, state = decide(ctx)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    trace = generate(shape_rates("business-hours", args.days, 20.0, 2.0), 0.1)
    kw: dict[str, Any] = {
        "cold_starts_s": [30.0],
        "capacity_qps": 12.0,
        "price_per_hour": 5.0,
        "currency": "RMB",
    }
    decisions = -(-trace.seconds // int(DECIDE_EVERY_S))
    floor = anchor(decisions)
    t0 = time.process_time()
    plain = simulate(spec(), trace, **kw)
    t1 = time.process_time()
    cron = simulate(spec(rules=RULES), trace, **kw)
    t2 = time.process_time()
    # an async service on its backlog (target 5: it flaps through every peak, the queue's worst case)
    queued = simulate(spec({"type": "Async"}, metric="backlog", target=5, max_replicas=6), trace, **kw)
    t3 = time.process_time()
    goal = GOAL_S * args.days / 30
    print(f"{args.days} days at 1 s, {decisions:,} decisions (CPU seconds, one core):")
    print(f"  anchor: decide() alone          {floor:6.2f} s")
    print(f"  simulate, qps policy            {t1 - t0:6.2f} s  ({(t1 - t0) / floor:.2f}x the anchor)")
    print(f"  simulate, qps + 3 cron rules    {t2 - t1:6.2f} s  ({(t2 - t1) / floor:.2f}x the anchor)")
    print(f"  simulate, async on its backlog  {t3 - t2:6.2f} s  ({(t3 - t2) / floor:.2f}x the anchor)")
    worst = max(t1 - t0, t2 - t1, t3 - t2)
    verdict = "PASS" if worst <= goal else "MISS"
    print(f"verdict: {verdict} (goal ≤ {goal:.1f} s for {args.days} days; worst {worst:.2f} s)")
    print(json.dumps({"qps": plain.as_dict(), "cron": cron.as_dict(), "async": queued.as_dict()}))


if __name__ == "__main__":
    main()
