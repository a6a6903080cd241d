"""The idle-spend alarm: replicas paid to idle, found from the autoscaler's own decisions (pure).

Each decision says how many replicas run (``current``) and how many the load needs (its
``recommendation``, before the bounds: what the metrics alone ask for). A service is **idle**
when the load needs at most :data:`IDLE_FRACTION` of its replicas, and at least
:data:`IDLE_MIN_EXCESS` replicas more than it needs run. When that holds without a break for
``hold_s`` (:data:`IDLE_HOLD_S`, 3 hours), the alarm fires once (a Warning event); it stays on
(gauge, ``ls``/``describe`` line) while the service stays idle, and a decision that is not idle
ends the episode. A decision without data (``recommendation`` None: "no data" is not zero)
neither starts, breaks nor fires an episode.

What the idle capacity costs: idle replicas (current - needed) x the hourly price x 720 h.
The field guide's story: min_replicas 10 at 0.5 QPS off-peak with 10 QPS per replica needs 1
replica; 9 are paid to idle. The server's watch adds what the simulator says a better min/max
would save (:mod:`openeas.autoscaler.whatif`), or what it lacks to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openeas.cost.estimate import HOURS_PER_MONTH, money

IDLE_FRACTION = 0.25  # the load needs at most a quarter of the replicas that run
IDLE_MIN_EXCESS = 2  # and at least 2 replicas more than it needs run
IDLE_HOLD_S = 3 * 3600.0  # for 3 hours without a break


@dataclass(frozen=True)
class IdleState:
    since: float | None = None  # epoch seconds the current idle episode began; None: not idle
    fired: bool = False  # the episode's Warning event was recorded


@dataclass(frozen=True)
class Idle:
    """An idle episode that has held for ``hold_s``."""

    since: float
    replicas: int
    needed: int
    price_per_hour: float | None  # None: the service maps to no catalog price
    currency: str
    # What the simulator says a better min/max would save (autoscaler/whatif.py, filled by the
    # server's watch): currency units a month, None when unknown; ``saving`` says it in words,
    # or what is missing to know it ("" when not asked).
    saving_per_month: float | None = None
    saving: str = ""

    @property
    def idle_replicas(self) -> int:
        return self.replicas - self.needed

    @property
    def monthly_cost(self) -> float | None:
        if self.price_per_hour is None:
            return None
        return self.idle_replicas * self.price_per_hour * HOURS_PER_MONTH

    def message(self, now: float) -> str:
        hours = (now - self.since) / 3600
        cost = (
            "its price is unknown (no catalog type)"
            if self.monthly_cost is None
            else f"{self.idle_replicas} x {self.price_per_hour:g} {self.currency}/h x 720 h = "
            f"{money(self.monthly_cost)} {self.currency}/month"
        )
        return (
            f"{self.replicas} replicas run, the load needs {self.needed} (for {hours:.1f} h): "
            f"{self.idle_replicas} idle replicas cost {cost}; lower min_replicas"
            + (f"; {self.saving}" if self.saving else "")
        )

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "since": self.since,
            "replicas": self.replicas,
            "needed": self.needed,
            "idle_replicas": self.idle_replicas,
            "monthly_cost": None if self.monthly_cost is None else round(self.monthly_cost, 2),
            "currency": self.currency,
            "saving_per_month": None if self.saving_per_month is None else round(self.saving_per_month, 2),
            "message": self.message(now),
        }


def is_idle(replicas: int, needed: int) -> bool:
    return replicas - needed >= IDLE_MIN_EXCESS and needed <= IDLE_FRACTION * replicas


def observe(
    state: IdleState,
    now: float,
    replicas: int,
    needed: int | None,
    *,
    price_per_hour: float | None,
    currency: str,
    hold_s: float = IDLE_HOLD_S,
) -> tuple[IdleState, Idle | None, bool]:
    """One decision: (the new state, the idle episode when it has held ``hold_s``, whether the
    alarm fires now: once per episode)."""
    if needed is None:
        return state, None, False
    if not is_idle(replicas, needed):
        return IdleState(), None, False
    since = state.since if state.since is not None else now
    if now - since < hold_s:
        return IdleState(since, state.fired), None, False
    idle = Idle(since, replicas, needed, price_per_hour, currency)
    return IdleState(since, True), idle, not state.fired
