"""Pure rollout decisions: which replicas to create and which to stop, given what exists; and
how long a failed replica waits before its restart.

Level-triggered: `plan_rollout` is called on every reconcile pass with the current replicas and
returns the next step only. Replicas already `stopping` do not count. During a rolling update
(replicas of an older version remain) it keeps the replicas at most `max_surge` above desired,
and stops an old Ready replica only while the Ready replicas stay at least desired minus
`max_unavailable` (EAS's `metadata.rolling_strategy`); old replicas that are not Ready are
stopped at once. A plain scale-down (the autoscaler's or `openeas scale`) stops replicas that
are not Ready first, then those with the fewest requests in flight at the gateway (then the
newest); each one drains before it stops (see controller/replica.py).

Standbys (metadata.standby; docs/cold-start.md) are replicas of the current version kept warmed
out of routing. They are neither routed capacity nor scale-in candidates: a scale-out promotes
them first (warmed ones, then the oldest), and only what they cannot cover is created cold; the
pool is refilled with new standbys once no replica of an older version is left (a rolling update
stops old standbys at once, and the new version refills the pool when it is done) and no promoted
standby is still on its way into routing (a refill's start would compete with the promotion for
the control plane's loop and the node's CPU: measured, it took a test server's promotion from
~30 ms to ~150-250 ms on two busy cores).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from openeas.kernel.states import ReplicaPhase

# Seconds the pool's refill waits after a replica of the service became Ready (a promoted standby):
# a refill's start (a model server's process start and model load) took the CPU its first
# requests needed (measured: see docs/cold-start.md, "What a promotion waits for").
REFILL_SETTLE_S = 1.0


@dataclass(frozen=True)
class ReplicaView:
    id: str
    version: int
    phase: str
    stopping: bool
    created_at: float  # seconds since the epoch
    in_flight: int = 0  # requests the gateway has in flight on it (last read)
    standby: bool = False  # kept out of routing for a scale-out (metadata.standby)
    ready_at: float | None = None  # first seen Ready, seconds on the caller's clock (None: not Ready)
    node: str | None = None  # the runtime's node (a Ray node id); None: the server's machine

    @property
    def ready(self) -> bool:
        return self.phase == ReplicaPhase.READY


@dataclass(frozen=True)
class RolloutPlan:
    create: int  # new replicas that go into routing when Ready
    stop: tuple[str, ...]
    create_standby: int = 0  # new replicas kept as standbys once warmed
    promote: tuple[str, ...] = ()  # standbys to move into routing now


def plan_standby(
    replicas: Sequence[ReplicaView],
    *,
    current_version: int,
    desired: int,
    standby: int,
    now: float | None = None,
) -> tuple[RolloutPlan, list[ReplicaView]]:
    """The standbys' part of a pass: promotions, surplus and old standbys to stop, standbys to
    create; and the replicas left for `plan_rollout` (the routed ones, promoted ones included).
    ``now`` (seconds, the clock of the views' `ready_at`): the refill also waits `REFILL_SETTLE_S`
    after a replica became Ready; None: it does not."""
    live = [r for r in replicas if not r.stopping]
    routed = [r for r in live if not r.standby]
    pool = [r for r in live if r.standby]
    stop = [r.id for r in pool if r.version != current_version]
    pool = [r for r in pool if r.version == current_version]
    # Warmed standbys first (they answer at once), then the oldest (the furthest along).
    pool.sort(key=lambda r: (r.phase != ReplicaPhase.STANDBY, r.created_at))
    need = max(0, desired - sum(r.version == current_version for r in routed))
    promote = pool[:need]
    pool = pool[need:]
    # Surplus: the least warmed first, then the newest.
    surplus = sorted(pool, key=lambda r: (r.phase == ReplicaPhase.STANDBY, -r.created_at))[
        : max(0, len(pool) - standby)
    ]
    stop += [r.id for r in surplus]
    rolling = any(r.version != current_version for r in routed)
    # Promoted (no longer a standby) but not yet Ready: this pass's promotions and earlier ones.
    promoting = promote or any(r.phase == ReplicaPhase.STANDBY for r in routed)
    # Just Ready (a promoted standby's first requests): a refill's start would take the CPU they need.
    settling = now is not None and any(
        r.ready and r.ready_at is not None and now - r.ready_at < REFILL_SETTLE_S for r in routed
    )
    create_standby = 0 if rolling or promoting or settling else max(0, standby - (len(pool) - len(surplus)))
    left = routed + [replace(r, standby=False) for r in promote]
    plan = RolloutPlan(
        create=0, stop=tuple(stop), create_standby=create_standby, promote=tuple(r.id for r in promote)
    )
    return plan, left


def plan_rollout(
    replicas: Sequence[ReplicaView],
    *,
    current_version: int,
    desired: int,
    max_surge: int = 1,
    max_unavailable: int = 0,
    standby: int = 0,
    now: float | None = None,
) -> RolloutPlan:
    """The next step; `standby`: how many standbys the current version keeps, `now` when the
    refill may start (see plan_standby)."""
    sb, replicas = plan_standby(
        replicas, current_version=current_version, desired=desired, standby=standby, now=now
    )
    routed = _plan_routed(
        replicas,
        current_version=current_version,
        desired=desired,
        max_surge=max_surge,
        max_unavailable=max_unavailable,
    )
    return replace(routed, stop=sb.stop + routed.stop, create_standby=sb.create_standby, promote=sb.promote)


def _plan_routed(
    replicas: Sequence[ReplicaView],
    *,
    current_version: int,
    desired: int,
    max_surge: int,
    max_unavailable: int,
) -> RolloutPlan:
    live = [r for r in replicas if not r.stopping]
    cur = [r for r in live if r.version == current_version]
    old = [r for r in live if r.version != current_version]
    stop: list[str] = []

    if len(cur) > desired:
        # Scale down: not-Ready replicas first, then one on the node that holds the most of those
        # left (one node's loss then takes as few as it can), then the fewest requests in flight,
        # then the newest.
        keep = list(cur)
        for _ in range(len(cur) - desired):
            crowd: Counter[str | None] = Counter(r.node for r in keep if r.node is not None)
            victim = min(keep, key=lambda r: (r.ready, -crowd[r.node], r.in_flight, -r.created_at))
            keep.remove(victim)
            stop.append(victim.id)
        cur = keep

    if old:
        # Both zero would deadlock a rollout; EAS treats that as a surge of one.
        surge = max_surge if (max_surge or max_unavailable) else 1
        room = desired + surge - (len(cur) + len(old))
        create = max(0, min(desired - len(cur), room))
    else:
        create = max(0, desired - len(cur))

    ready_total = sum(r.ready for r in cur) + sum(r.ready for r in old)
    min_available = max(0, desired - max_unavailable)
    for r in sorted(old, key=lambda r: (r.ready, r.created_at)):
        if not r.ready:
            stop.append(r.id)
        elif ready_total - 1 >= min_available:
            stop.append(r.id)
            ready_total -= 1
    return RolloutPlan(create=create, stop=tuple(stop))


def restart_backoff_s(restart_count: int, *, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Delay before restarting a crashed replica: 1, 2, 4, … seconds, capped."""
    return float(min(cap_s, base_s * 2 ** max(0, restart_count - 1)))
