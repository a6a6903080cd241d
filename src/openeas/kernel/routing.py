"""The routing record: what the gateway needs to know about a service, and nothing else.

The store writes it (``versions.route``, the route-settings record), the gateway routes by it and
the dispatcher delivers with it. Standard library only: the gateway imports neither SQLAlchemy nor
pydantic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from openeas.kernel.groups import GroupDef
from openeas.kernel.queue import QueueSettings

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # bytes
DEFAULT_BALANCER = "least-request"
# The gateway's balancer registry by name (openeas.gateway.routing.balancers; a test pins that the two
# agree): the spec validates `metadata.balancer` against it without importing the gateway.
BALANCER_NAMES = frozenset(
    {
        "least-kv",
        "least-request",
        "least-waiting",
        "power-of-two",
        "prefix-affinity",
        "round-robin",
        "session-affinity",
    }
)
# Requests one gateway holds for one service while it has no routable replica (scale from zero, a
# replica restarting); more get 429. Sized for what a service idle enough to be at zero receives
# during a cold start (10 s at 10 requests/s); a bigger burst is better told to back off
# (Retry-After) than left piling up connections and bodies in the gateway
# (docs/scale-from-zero.md). EAS's metadata.rpc.max_queue_size sets it.
DEFAULT_MAX_HELD = 100
# Seconds a held request waits for a routable replica before a 503: longer than the slowest cold
# start OpenEAS is tested with (vLLM on a CPU, 30-70 s), shorter than common client timeouts (the
# OpenAI SDK's 600 s), so the client gets the gateway's clear 503 rather than its own timeout.
# OpenEAS's metadata.rpc.hold_timeout_ms sets it.
DEFAULT_HOLD_TIMEOUT_S = 120.0
# The PostgreSQL channel a store on PostgreSQL notifies (payload: the new routing version) in the
# transaction that bumps the routing version; gateways LISTEN on it (openeas.gateway.routing.pg_source).
ROUTING_CHANNEL = "openeas_routing"
# The store's routing change log (openeas.store.routing_log writes it, openeas.gateway.routing.changes
# reads it): the table, and the kinds of what a routing version changed.
ROUTING_LOG_TABLE = "routing_changes"
CHANGED_SERVICE = "service"
CHANGED_GROUP = "group"
CHANGED_ALL = "all"  # the writer did not say what changed: every route may have (name "")


class Upstream(NamedTuple):
    """One Ready replica.

    A named tuple, not a dataclass: a gateway's whole table makes one per replica, and building
    one is a tenth of a frozen dataclass's cost (``tuple.__new__(Upstream, (id, host, port))``,
    as the store's routing source does: 0.2 µs against 1.8 µs, bench/cluster.py's routing part).
    Immutable, hashable and equal by value as before."""

    replica_id: str
    host: str
    port: int  # TCP port


@dataclass(frozen=True)
class RouteSettings:
    """A service version's routing settings, as plain values.

    The control plane computes this record from the typed spec when it writes a version
    (``openeas.store.routing.route_settings``) and stores it with the version; the gateway reads
    only this record, never the spec. Missing keys take the defaults, unknown keys are ignored,
    so either side can be newer than the other.
    """

    timeout_s: float | None = None  # seconds (metadata.rpc.keepalive ms / 1000); None = no limit; 408
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # bytes; a larger request body gets 413
    balancer: str = DEFAULT_BALANCER  # name in the balancer registry
    # Resend a request to another replica when one closed the connection after the request was
    # sent and before any byte of answer (metadata.rpc.resend_unanswered).
    resend_unanswered: bool = True
    # Scale from zero (gateway/http/activator.py): requests held while the service has no routable
    # replica, at most (metadata.rpc.max_queue_size; more get 429), and for how long (seconds,
    # metadata.rpc.hold_timeout_ms / 1000; then 503).
    max_held: int = DEFAULT_MAX_HELD
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S
    # Requests per second the service accepts (metadata.rpc.rate_limit); 0 = no limit; 429 above.
    rate_limit: float = 0.0
    # An async service's queue (metadata.type Async, the spec's `queue` block; docs/async.md);
    # None: a real-time service, proxied.
    queue: QueueSettings | None = None

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> RouteSettings:
        d = data or {}
        timeout = d.get("timeout_s")
        queue = d.get("queue")
        return RouteSettings(
            timeout_s=float(timeout) if timeout is not None else None,
            max_body_bytes=int(d.get("max_body_bytes") or DEFAULT_MAX_BODY_BYTES),
            balancer=str(d.get("balancer") or DEFAULT_BALANCER),
            resend_unanswered=bool(d.get("resend_unanswered", True)),
            max_held=int(d.get("max_held") or DEFAULT_MAX_HELD),
            hold_timeout_s=float(d.get("hold_timeout_s") or DEFAULT_HOLD_TIMEOUT_S),
            rate_limit=float(d.get("rate_limit") or 0.0),
            queue=QueueSettings.from_dict(queue) if isinstance(queue, Mapping) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "max_body_bytes": self.max_body_bytes,
            "balancer": self.balancer,
            "resend_unanswered": self.resend_unanswered,
            "max_held": self.max_held,
            "hold_timeout_s": self.hold_timeout_s,
            "rate_limit": self.rate_limit,
            "queue": self.queue.to_dict() if self.queue is not None else None,
        }


@dataclass(frozen=True)
class Route:
    service: str
    token: str | None  # plaintext (decrypted by the source); None means the service needs no token
    upstreams: tuple[Upstream, ...]
    timeout_s: float | None = None  # metadata.rpc.keepalive / 1000; None = no limit; 408 when exceeded
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # 413 above this
    balancer: str = DEFAULT_BALANCER  # name in the balancer registry
    resend_unanswered: bool = True  # see RouteSettings.resend_unanswered
    max_held: int = DEFAULT_MAX_HELD  # see RouteSettings.max_held
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S  # see RouteSettings.hold_timeout_s
    rate_limit: float = 0.0  # see RouteSettings.rate_limit
    queue: QueueSettings | None = None  # see RouteSettings.queue
    # Stopped by its operator: a request gets a 503 at once instead of being held for a replica.
    stopped: bool = False

    @staticmethod
    def of(
        service: str,
        token: str | None,
        upstreams: tuple[Upstream, ...],
        settings: RouteSettings,
        *,
        stopped: bool = False,
    ) -> Route:
        """A route from its service's settings record."""
        return Route(
            service=service,
            token=token,
            upstreams=upstreams,
            timeout_s=settings.timeout_s,
            max_body_bytes=settings.max_body_bytes,
            balancer=settings.balancer,
            resend_unanswered=settings.resend_unanswered,
            max_held=settings.max_held,
            hold_timeout_s=settings.hold_timeout_s,
            rate_limit=settings.rate_limit,
            queue=settings.queue,
            stopped=stopped,
        )

    @property
    def settings(self) -> RouteSettings:
        return RouteSettings(
            timeout_s=self.timeout_s,
            max_body_bytes=self.max_body_bytes,
            balancer=self.balancer,
            resend_unanswered=self.resend_unanswered,
            max_held=self.max_held,
            hold_timeout_s=self.hold_timeout_s,
            rate_limit=self.rate_limit,
            queue=self.queue,
        )


@dataclass(frozen=True)
class RoutingTable:
    version: int
    routes: Mapping[str, Route] = field(default_factory=dict)
    groups: Mapping[str, GroupDef] = field(default_factory=dict)  # service groups (group_table.py)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RoutingTable:
        routes = {}
        for name, r in data.get("routes", {}).items():
            routes[name] = Route.of(
                name,
                r.get("token"),
                tuple(Upstream(**u) for u in r.get("upstreams", [])),
                RouteSettings.from_dict(r),
                stopped=bool(r.get("stopped", False)),
            )
        groups = {name: GroupDef.from_dict(name, g) for name, g in data.get("groups", {}).items()}
        return RoutingTable(version=int(data.get("version", 0)), routes=routes, groups=groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "routes": {
                name: {
                    "token": r.token,
                    "upstreams": [u._asdict() for u in r.upstreams],
                    "stopped": r.stopped,
                    **r.settings.to_dict(),
                }
                for name, r in self.routes.items()
            },
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
        }
