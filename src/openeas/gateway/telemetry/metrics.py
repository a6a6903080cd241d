"""Owns the gateway's metrics: per-service plain ints updated on the hot path, rendered only
when scraped.

`GatewayMetrics.snapshot()` is the seam the autoscaler and console read; ``render()`` produces the
Prometheus text exposition served on ``GET /metrics``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from openeas.gateway.groups.group_metrics import MemberMetrics, group_lines
from openeas.gateway.telemetry.histogram import histogram_lines
from openeas.telemetry.gateway_stats import JUMP_MIN_IN_FLIGHT
from openeas.telemetry.latency import SERVICE_LATENCY_BUCKETS_S

_HIST = "openeas_gateway_request_duration_seconds"

# Upper bounds (seconds) of the hold-wait histogram: from a replica already starting (ms) to a
# cold start of a large model (minutes); the last one is +Inf.
HOLD_WAIT_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    math.inf,
)


class HoldStats:
    """One service's held requests (gateway/http/activator.py): made on its first hold."""

    __slots__ = (
        "abandoned",
        "ended",
        "held",
        "held_total",
        "overflow",
        "timed_out",
        "wait_buckets",
        "wait_sum_s",
    )

    def __init__(self) -> None:
        self.held = 0  # waiting now
        self.held_total = 0  # ever held; = held + released + timed_out + abandoned + ended
        self.timed_out = 0  # answered 503 after hold_timeout_s
        self.abandoned = 0  # the client closed while held
        self.ended = 0  # answered otherwise while held (stopped, deleted, 408, 413)
        self.overflow = 0  # refused with 429: the queue was full (never held)
        self.wait_buckets = [0] * len(HOLD_WAIT_BUCKETS_S)  # released requests, non-cumulative
        self.wait_sum_s = 0.0

    @property
    def released_total(self) -> int:
        return sum(self.wait_buckets)

    def released(self, seconds: float) -> None:
        """A held request was written to a replica ``seconds`` after it was held."""
        self.wait_buckets[bisect_left(HOLD_WAIT_BUCKETS_S, seconds)] += 1
        self.wait_sum_s += seconds


class ServiceMetrics:
    """Counters for one service. Mutated only from the gateway's event loop."""

    __slots__ = ("buckets", "by_code", "hold", "in_flight", "latency_count", "latency_sum_s", "push_at")

    def __init__(self) -> None:
        self.by_code: dict[int, int] = {}
        self.in_flight = 0  # requests between their head and their outcome, held ones included
        # The in-flight count (held included) at which the gateway sends its counters at once (a
        # jump, see gateway/telemetry/stats.py); raised by every datagram sent.
        self.push_at = JUMP_MIN_IN_FLIGHT
        self.hold: HoldStats | None = None  # made by the first request held for the service
        self.buckets = [0] * len(SERVICE_LATENCY_BUCKETS_S)  # non-cumulative counts per bucket
        self.latency_sum_s = 0.0
        self.latency_count = 0

    def finish(self, status: int, seconds: float) -> None:
        """One request answered (by a replica or by the gateway) after ``seconds``."""
        by_code = self.by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.in_flight -= 1
        self.buckets[bisect_left(SERVICE_LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds
        self.latency_count += 1


@dataclass(frozen=True)
class ServiceSnapshot:
    requests_total: int  # answered requests, any status
    errors_total: int  # answered with status >= 500
    in_flight: int  # requests being proxied right now
    by_code: dict[int, int]
    latency_sum_s: float
    latency_count: int


class GatewayMetrics:
    def __init__(self) -> None:
        self.services: dict[str, ServiceMetrics] = {}
        # Requests that matched no service (unknown service, paths outside /api/predict): by status.
        # Not labelled by the requested name, so random names cannot blow up cardinality.
        self.unrouted_by_code: dict[int, int] = {}
        # Guarding the gateway itself (see ProxyContext): its limits, and what they refused or closed.
        self.limits: dict[str, float] = {}
        self.rejected: dict[str, int] = {}  # requests/connections refused, by reason
        self.timeouts: dict[str, int] = {}  # connections closed by a deadline, by kind
        self.picks: dict[tuple[str, str], int] = {}  # replicas picked, by balancer and outcome
        self.connections = 0  # open client connections
        self.routing_version = -1  # the routing table's version this gateway applied (-1: none yet)
        # (replica id, routed now, requests in flight) for every replica the gateway routes to or
        # still has requests on; set by the gateway, read only when scraped (drains wait on it).
        self.replicas: Callable[[], Iterable[tuple[str, bool, int]]] | None = None
        # (group, member service) → live and mirrored traffic of service groups (group_metrics.py).
        self.groups: dict[tuple[str, str], MemberMetrics] = {}
        # The async queues' lines (gateway/asyncq/queues.py), rendered after the gateway's own.
        self.queue_lines: Callable[[], list[str]] | None = None
        # A worker of several (--workers N, gateway/telemetry/siblings.py): adds the other workers' share to
        # /metrics (its own text → all workers') and to /groups/<g> (group, its members' counters).
        self.merge_text: Callable[[bytes], bytes] | None = None
        self.merge_group: Callable[[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]] | None = None

    def exposition(self) -> bytes:
        """``GET /metrics``: this gateway's text, every worker's with --workers N."""
        own = self.render()
        return own if self.merge_text is None else self.merge_text(own)

    def group_member(self, group: str, service: str) -> MemberMetrics:
        m = self.groups.get((group, service))
        if m is None:
            m = self.groups[(group, service)] = MemberMetrics()
        return m

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def picked(self, balancer: str, outcome: str) -> None:
        key = (balancer, outcome)
        self.picks[key] = self.picks.get(key, 0) + 1

    def timed_out(self, kind: str) -> None:
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def service(self, name: str) -> ServiceMetrics:
        m = self.services.get(name)
        if m is None:
            m = self.services[name] = ServiceMetrics()
        return m

    def retain(self, services: Collection[str], groups: Collection[str]) -> None:
        """Forget the series of services and groups that left the routing table (deleted), so
        ``/metrics`` does not keep them forever; a service with requests still in flight or held
        is kept until a later table (its counters would be lost mid-request otherwise)."""
        for name in [n for n in self.services if n not in services]:
            m = self.services[name]
            if m.in_flight <= 0 and (m.hold is None or m.hold.held <= 0):
                del self.services[name]
        for key in [k for k in self.groups if k[0] not in groups]:
            del self.groups[key]

    def unrouted(self, status: int) -> None:
        self.unrouted_by_code[status] = self.unrouted_by_code.get(status, 0) + 1

    def snapshot(self) -> dict[str, ServiceSnapshot]:
        out = {}
        for name, m in self.services.items():
            codes = dict(m.by_code)
            out[name] = ServiceSnapshot(
                requests_total=sum(codes.values()),
                errors_total=sum(v for c, v in codes.items() if c >= 500),
                in_flight=m.in_flight,
                by_code=codes,
                latency_sum_s=m.latency_sum_s,
                latency_count=m.latency_count,
            )
        return out

    def render(self) -> bytes:
        lines = [
            "# HELP openeas_gateway_requests_total Requests answered by the gateway, by service and status.",
            "# TYPE openeas_gateway_requests_total counter",
        ]
        items = sorted(self.services.items())
        for name, m in items:
            svc = label_value(name)
            for code, n in sorted(m.by_code.items()):
                lines.append(f'openeas_gateway_requests_total{{service="{svc}",code="{code}"}} {n}')
        lines += [
            "# HELP openeas_gateway_unrouted_requests_total Requests that matched no service, by status.",
            "# TYPE openeas_gateway_unrouted_requests_total counter",
        ]
        for code, n in sorted(self.unrouted_by_code.items()):
            lines.append(f'openeas_gateway_unrouted_requests_total{{code="{code}"}} {n}')
        lines += [
            "# HELP openeas_gateway_in_flight_requests Requests being proxied now, by service.",
            "# TYPE openeas_gateway_in_flight_requests gauge",
        ]
        for name, m in items:
            lines.append(f'openeas_gateway_in_flight_requests{{service="{label_value(name)}"}} {m.in_flight}')
        lines += [
            "# HELP openeas_gateway_request_duration_seconds Time from request head to response end.",
            "# TYPE openeas_gateway_request_duration_seconds histogram",
        ]
        for name, m in items:
            labels = f'service="{label_value(name)}"'
            sum_s, count = m.latency_sum_s, m.latency_count
            lines += histogram_lines(_HIST, labels, SERVICE_LATENCY_BUCKETS_S, m.buckets, sum_s, count)
        lines += _pick_lines(self.picks)
        lines += _hold_lines([(label_value(name), m.hold) for name, m in items if m.hold is not None])
        lines += _guard_lines(self)
        if self.replicas is not None:
            lines += _replica_lines(self.replicas())
        if self.groups:
            lines += group_lines(self.groups, label_value)
        if self.queue_lines is not None:
            lines += self.queue_lines()
        lines.append("")
        return "\n".join(lines).encode()


_HOLD_COUNTERS = (
    (
        "held_requests_total",
        "Requests held for a routable replica (scale from zero, replicas restarting).",
        "held_total",
    ),
    (
        "held_requests_released_total",
        "Held requests sent to a replica once one was routable.",
        "released_total",
    ),
    ("held_requests_timed_out_total", "Held requests answered 503 after the hold timeout.", "timed_out"),
    ("held_requests_abandoned_total", "Held requests whose client closed the connection.", "abandoned"),
    (
        "held_requests_ended_total",
        "Held requests answered otherwise (service stopped or deleted, 408, 413).",
        "ended",
    ),
    ("hold_overflow_total", "Requests refused with 429: the service's hold queue was full.", "overflow"),
)
_WAIT = "openeas_gateway_hold_wait_seconds"


def _hold_lines(holds: list[tuple[str, HoldStats]]) -> list[str]:
    lines = [
        "# HELP openeas_gateway_held_requests Requests waiting for a routable replica now, by service.",
        "# TYPE openeas_gateway_held_requests gauge",
    ]
    lines += [f'openeas_gateway_held_requests{{service="{svc}"}} {h.held}' for svc, h in holds]
    for name, help_text, attr in _HOLD_COUNTERS:
        lines += [f"# HELP openeas_gateway_{name} {help_text}", f"# TYPE openeas_gateway_{name} counter"]
        lines += [f'openeas_gateway_{name}{{service="{svc}"}} {getattr(h, attr)}' for svc, h in holds]
    lines += [
        f"# HELP {_WAIT} Time from a request being held to its being sent to a replica.",
        f"# TYPE {_WAIT} histogram",
    ]
    for svc, h in holds:
        total = sum(h.wait_buckets)
        labels = f'service="{svc}"'
        lines += histogram_lines(_WAIT, labels, HOLD_WAIT_BUCKETS_S, h.wait_buckets, h.wait_sum_s, total)
    return lines


def _guard_lines(m: GatewayMetrics) -> list[str]:
    lines = [
        "# HELP openeas_gateway_connections Open client connections.",
        "# TYPE openeas_gateway_connections gauge",
        f"openeas_gateway_connections {m.connections}",
        "# HELP openeas_gateway_routing_version The routing table version this gateway applied (-1: none).",
        "# TYPE openeas_gateway_routing_version gauge",
        f"openeas_gateway_routing_version {m.routing_version}",
        "# HELP openeas_gateway_limit The gateway's limits on clients (bytes, counts, seconds).",
        "# TYPE openeas_gateway_limit gauge",
    ]
    lines += [f'openeas_gateway_limit{{name="{k}"}} {v:g}' for k, v in sorted(m.limits.items())]
    lines += [
        "# HELP openeas_gateway_rejected_total Requests or connections refused by a limit, by reason.",
        "# TYPE openeas_gateway_rejected_total counter",
    ]
    lines += [f'openeas_gateway_rejected_total{{reason="{k}"}} {v}' for k, v in sorted(m.rejected.items())]
    lines += [
        "# HELP openeas_gateway_timeouts_total Client connections closed by a deadline, by kind.",
        "# TYPE openeas_gateway_timeouts_total counter",
    ]
    lines += [f'openeas_gateway_timeouts_total{{kind="{k}"}} {v}' for k, v in sorted(m.timeouts.items())]
    return lines


def _replica_lines(replicas: Iterable[tuple[str, bool, int]]) -> list[str]:
    rows = sorted(replicas)
    lines = [
        "# HELP openeas_gateway_replica_in_flight Requests sent to a replica and not yet answered.",
        "# TYPE openeas_gateway_replica_in_flight gauge",
    ]
    lines += [f'openeas_gateway_replica_in_flight{{replica="{label_value(r)}"}} {n}' for r, _, n in rows]
    lines += [
        "# HELP openeas_gateway_replica_routed 1 while the routing table sends new requests to a replica.",
        "# TYPE openeas_gateway_replica_routed gauge",
    ]
    lines += [f'openeas_gateway_replica_routed{{replica="{label_value(r)}"}} {int(up)}' for r, up, _ in rows]
    return lines


def label_value(value: str) -> str:
    """A Prometheus label value, escaped (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _pick_lines(picks: dict[tuple[str, str], int]) -> list[str]:
    lines = [
        "# HELP openeas_gateway_balancer_picks_total Replicas picked, by balancer and outcome "
        "(affinity: owner, spill past the load bound, no-key; least-kv/least-waiting: signal, unknown).",
        "# TYPE openeas_gateway_balancer_picks_total counter",
    ]
    for (balancer, outcome), n in sorted(picks.items()):
        lines.append(f'openeas_gateway_balancer_picks_total{{balancer="{balancer}",outcome="{outcome}"}} {n}')
    return lines
