"""The cold-start breakdown of a replica start: which phase spans are measured, and how.

The supervisor computes it when a replica turns Ready; the API shows it and the control-plane
metrics observe it. All values are seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from openeas.kernel.states import ReplicaPhase as P

# Span name → (phase it starts in, phases that may end it: the first one stamped).
COLD_START_SPANS: Mapping[str, tuple[P, tuple[P, ...]]] = {
    "pull_s": (P.PULLING, (P.FETCHING,)),
    "fetch_s": (P.FETCHING, (P.PREPARING, P.STARTING)),
    "prepare_s": (P.PREPARING, (P.STARTING,)),
    "start_s": (P.STARTING, (P.WARMING,)),
    # A standby's cold start ends when it is parked, warmed (its promotion is timed apart).
    "warm_s": (P.WARMING, (P.STANDBY, P.READY)),
    "total_s": (P.PENDING, (P.STANDBY, P.READY)),
}


def breakdown(phase_times: Mapping[str, float]) -> dict[str, float | None]:
    """Seconds spent in each span of COLD_START_SPANS, from a replica's phase timestamps.

    A span whose ends were not both stamped (or are out of order) is None: not measured.
    """
    t = phase_times
    out: dict[str, float | None] = {}
    for name, (a, ends) in COLD_START_SPANS.items():
        b = next((e for e in ends if e in t), None)
        out[name] = round(t[b] - t[a], 3) if a in t and b is not None and t[b] >= t[a] else None
    return out


# The phases the statistics report, in the order a start goes through them.
STAT_SPANS: tuple[str, ...] = tuple(COLD_START_SPANS)


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 < q <= 1) of ascending values by nearest rank: the smallest value
    with at least ``q`` of them at or below it (the autoscaler's cold-start p90 is the same)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def phase_stats(starts: Sequence[Mapping[str, Any]], window: int) -> dict[str, dict[str, float | int | None]]:
    """p50 and p90 (nearest rank) of each span over the last ``window`` starts (oldest first).

    A start that did not go through a phase (no image to pull, no requirements) does not count
    for it: ``n`` says how many did; a phase no start measured has None percentiles (no data is
    not zero).
    """
    recent = list(starts)[-window:] if window > 0 else []
    out: dict[str, dict[str, float | int | None]] = {}
    for span in STAT_SPANS:
        values = sorted(
            float(v)
            for s in recent
            if isinstance(v := s.get(span), int | float) and not isinstance(v, bool) and math.isfinite(v)
        )
        out[span] = {
            "n": len(values),
            "p50": nearest_rank(values, 0.5) if values else None,
            "p90": nearest_rank(values, 0.9) if values else None,
        }
    return out


def start_record(cold_start: Mapping[str, Any]) -> dict[str, Any]:
    """What the store keeps of one start (store/cold_starts.py): the spans, and where the image
    and the mounts came from (``pull.cached``, ``fetch.cache_hit`` and bytes), so a slow phase can
    be told apart from a cache miss."""
    out: dict[str, Any] = {k: cold_start.get(k) for k in COLD_START_SPANS}
    pull, fetch = cold_start.get("pull"), cold_start.get("fetch")
    if isinstance(pull, Mapping):
        out["pull"] = {"cached": bool(pull.get("cached"))}
    if isinstance(fetch, Mapping):
        out["fetch"] = {"cache_hit": bool(fetch.get("cache_hit")), "bytes": int(fetch.get("bytes") or 0)}
    return out


def startup_progress(
    phase: str, phase_times: Mapping[str, float], deadline_s: float | None, now: float
) -> dict[str, Any] | None:
    """How far a Starting replica is into its startup deadline (seconds since it entered
    Starting, the deadline), with describe's line: ``Starting for 42 s of 600 s``. None in any
    other phase, or when the start was not stamped or the deadline is unknown."""
    began = phase_times.get(P.STARTING.value)
    if phase != P.STARTING.value or began is None or deadline_s is None:
        return None
    elapsed = max(0.0, now - began)
    return {
        "elapsed_s": round(elapsed, 1),
        "deadline_s": deadline_s,
        "text": f"Starting for {elapsed:.0f} s of {deadline_s:g} s",
    }
