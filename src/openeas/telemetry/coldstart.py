"""The cold-start breakdown of a replica start: which phase spans are measured, and how.

The supervisor computes it when a replica turns Ready; the API shows it and the control-plane
metrics observe it. All values are seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

from openeas.kernel.states import ReplicaPhase as P

# Span name → (phase it starts in, phases that may end it: the first one stamped).
COLD_START_SPANS: Mapping[str, tuple[P, tuple[P, ...]]] = {
    "pull_s": (P.PULLING, (P.FETCHING,)),
    "fetch_s": (P.FETCHING, (P.PREPARING, P.STARTING)),
    "prepare_s": (P.PREPARING, (P.STARTING,)),
    "start_s": (P.STARTING, (P.WARMING,)),
    "warm_s": (P.WARMING, (P.READY,)),
    "total_s": (P.PENDING, (P.READY,)),
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
