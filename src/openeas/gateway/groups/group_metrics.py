"""Owns the per-member metrics of service groups: requests by status and a latency histogram for
live and mirrored traffic apart, mirror drops, and the comparison of mirrored pairs (candidate vs
the member that served the request), kept per (group, member) on the gateway.

They survive routing-table swaps (kept in `GatewayMetrics.groups`), are rendered on ``/metrics``
and served as JSON on ``GET /groups/<group>`` (the group's token), where the API reads them for
people (``openeas group describe``, ``group compare``); the live counters also travel in the
counters datagram (`openeas.gateway.telemetry.stats.group_samples`), which the staged rollout's
SLO checks read (`quantile` turns the histogram into p50/p99). Standard library only.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openeas.gateway.telemetry.histogram import histogram_lines
from openeas.telemetry.latency import GROUP_LATENCY_BUCKETS_S, quantile, success_ratio

COMPARE_SAMPLES = 10  # differing pairs kept per member (the newest)
COMPARE_BODY_CHARS = 2048  # characters of each body kept in a sample


class TrafficMetrics:
    """Requests of one kind (live or mirrored) to one group member. Loop thread only."""

    __slots__ = ("buckets", "by_code", "count", "sum_s")

    def __init__(self) -> None:
        self.by_code: dict[int, int] = {}
        self.buckets = [0] * len(GROUP_LATENCY_BUCKETS_S)  # non-cumulative
        self.sum_s = 0.0
        self.count = 0

    def finish(self, status: int, seconds: float) -> None:
        by_code = self.by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.buckets[bisect_left(GROUP_LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.count += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_code": {str(k): v for k, v in sorted(self.by_code.items())},
            "buckets": list(self.buckets),
            "sum_s": self.sum_s,
            "count": self.count,
        }


@dataclass(frozen=True)
class DiffSample:
    """One mirrored pair whose answers differ."""

    primary: str  # the member that served the client
    status: int  # the primary's
    mirror_status: int
    body: str  # the primary's body (truncated)
    mirror_body: str


class CompareStats:
    """Mirrored pairs of one member: the candidate's answer against the primary's."""

    __slots__ = ("body_differ", "latency_delta_sum_s", "pairs", "samples", "status_differ")

    def __init__(self) -> None:
        self.pairs = 0  # both answers complete
        self.status_differ = 0
        self.body_differ = 0  # same status, different body
        self.latency_delta_sum_s = 0.0  # sum of (mirror - primary) seconds
        self.samples: deque[DiffSample] = deque(maxlen=COMPARE_SAMPLES)

    def add(self, primary: str, p_status: int, p_body: bytes | None, p_s: float,
            m_status: int, m_body: bytes | None, m_s: float) -> None:  # fmt: skip
        self.pairs += 1
        self.latency_delta_sum_s += m_s - p_s
        same_status = p_status == m_status
        same_body = same_status and bodies_agree(p_body, m_body)
        if not same_status:
            self.status_differ += 1
        elif not same_body:
            self.body_differ += 1
        if not same_body:
            self.samples.append(
                DiffSample(primary, p_status, m_status, _text(p_body), _text(m_body))
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "status_differ": self.status_differ,
            "body_differ": self.body_differ,
            "latency_delta_sum_s": self.latency_delta_sum_s,
            "samples": [s.__dict__ for s in self.samples],
        }


class MemberMetrics:
    """One group member on this gateway: live and mirrored traffic, mirror drops and pairs."""

    __slots__ = ("compare", "dropped", "live", "mirror", "mirror_in_flight")

    def __init__(self) -> None:
        self.live = TrafficMetrics()
        self.mirror = TrafficMetrics()
        self.mirror_in_flight = 0  # copies sent and not yet answered
        self.dropped: dict[str, int] = {}  # copies not sent, by reason (mirror.py)
        self.compare = CompareStats()

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.live.to_dict(),
            "mirror": self.mirror.to_dict(),
            "mirror_in_flight": self.mirror_in_flight,
            "mirror_dropped": dict(sorted(self.dropped.items())),
            "compare": self.compare.to_dict(),
        }


def group_json(group: str, members: Mapping[str, Mapping[str, Any]]) -> bytes:
    """``GET /groups/<group>``: every member's counters (`MemberMetrics.to_dict`, cumulative
    since the gateway started)."""
    return json.dumps(
        {
            "group": group,
            "buckets_s": [b if b != math.inf else None for b in GROUP_LATENCY_BUCKETS_S],
            "members": dict(sorted(members.items())),
        },
        separators=(",", ":"),
    ).encode()


def traffic_summary(t: Mapping[str, Any]) -> dict[str, Any]:
    """requests, success ratio, p50/p99 (ms) of one `TrafficMetrics.to_dict()`."""
    buckets = list(t.get("buckets") or [])
    p50 = quantile(buckets, 0.5) if buckets else None
    p99 = quantile(buckets, 0.99) if buckets else None
    return {
        "requests": int(t.get("count", 0)),
        "success": success_ratio(t.get("by_code") or {}),
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
    }


# --- body comparison ---------------------------------------------------------------------------------

# Top-level JSON keys that differ between any two answers of the same model (ids, timestamps):
# left out when comparing bodies.
VOLATILE_KEYS = frozenset(("id", "created", "system_fingerprint", "request_id"))


def bodies_agree(a: bytes | None, b: bytes | None) -> bool:
    """Whether two answer bodies say the same: equal bytes, or equal JSON objects once the keys
    that always differ (`VOLATILE_KEYS`) are left out. A body not captured whole (None: longer
    than the capture limit, or cut) agrees with nothing: it cannot be shown to."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    try:
        ja, jb = json.loads(a), json.loads(b)
    except ValueError:
        return False
    if isinstance(ja, dict) and isinstance(jb, dict):
        return _stable(ja) == _stable(jb)
    return bool(ja == jb)


def _stable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in VOLATILE_KEYS}


def _text(body: bytes | None) -> str:
    if body is None:
        return "(not captured: larger than the capture limit)"
    return body[:COMPARE_BODY_CHARS].decode("utf-8", "replace")


# --- Prometheus lines ----------------------------------------------------------------------------------

_HIST = "openeas_gateway_group_request_duration_seconds"


def group_lines(groups: Mapping[tuple[str, str], MemberMetrics], label: Any) -> list[str]:
    """/metrics lines for every (group, member); ``label`` escapes a label value."""
    items = sorted(groups.items())
    lines = [
        "# HELP openeas_gateway_group_requests_total Requests through a service group, by member, "
        "traffic (live or mirror) and status.",
        "# TYPE openeas_gateway_group_requests_total counter",
    ]
    for (g, s), m in items:
        for traffic, t in (("live", m.live), ("mirror", m.mirror)):
            for code, n in sorted(t.by_code.items()):
                lines.append(
                    f'openeas_gateway_group_requests_total{{group="{label(g)}",service="{label(s)}",'
                    f'traffic="{traffic}",code="{code}"}} {n}'
                )
    lines += [
        f"# HELP {_HIST} Time from request head to response end, by group member and traffic.",
        f"# TYPE {_HIST} histogram",
    ]
    for (g, s), m in items:
        for traffic, t in (("live", m.live), ("mirror", m.mirror)):
            if not t.count:
                continue
            labels = f'group="{label(g)}",service="{label(s)}",traffic="{traffic}"'
            lines += _histogram(labels, t)
    lines += [
        "# HELP openeas_gateway_group_mirror_in_flight Mirrored copies sent and not yet answered.",
        "# TYPE openeas_gateway_group_mirror_in_flight gauge",
    ]
    lines += [
        f'openeas_gateway_group_mirror_in_flight{{group="{label(g)}",service="{label(s)}"}} '
        f"{m.mirror_in_flight}"
        for (g, s), m in items
    ]
    lines += [
        "# HELP openeas_gateway_group_mirror_dropped_total Mirrored copies not sent, by reason.",
        "# TYPE openeas_gateway_group_mirror_dropped_total counter",
    ]
    for (g, s), m in items:
        for reason, n in sorted(m.dropped.items()):
            lines.append(
                f'openeas_gateway_group_mirror_dropped_total{{group="{label(g)}",service="{label(s)}",'
                f'reason="{reason}"}} {n}'
            )
    lines += [
        "# HELP openeas_gateway_group_compare_pairs_total Mirrored pairs compared, by result.",
        "# TYPE openeas_gateway_group_compare_pairs_total counter",
    ]
    for (g, s), m in items:
        c = m.compare
        if not c.pairs:
            continue
        same = c.pairs - c.status_differ - c.body_differ
        for result, n in (("same", same), ("status_differ", c.status_differ), ("body_differ", c.body_differ)):
            lines.append(
                f'openeas_gateway_group_compare_pairs_total{{group="{label(g)}",service="{label(s)}",'
                f'result="{result}"}} {n}'
            )
    return lines


def _histogram(labels: str, t: TrafficMetrics) -> list[str]:
    return histogram_lines(_HIST, labels, GROUP_LATENCY_BUCKETS_S, t.buckets, t.sum_s, t.count)
