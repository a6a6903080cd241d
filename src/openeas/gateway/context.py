"""Owns what every client connection of one gateway shares (`ProxyContext`): the current routes
(swapped whole on each routing-table change), the metrics, the proxy's settings and limits (head
sizes, timeouts, the connection cap), the open client connections, the sweep that closes the
ones past their deadline, and the bounded cache of resolved request targets.
"""

from __future__ import annotations

import asyncio
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from openeas.gateway.auth import DEFAULT_MAX_DATE_SKEW_S
from openeas.gateway.routing.resolve import split_predict_path
from openeas.gateway.routing.routes import RouteState
from openeas.gateway.telemetry.metrics import GatewayMetrics

if TYPE_CHECKING:
    from openeas.gateway.asyncq.queues import AsyncQueues
    from openeas.gateway.groups.split import GroupState
    from openeas.gateway.http.activator import HoldQueue
    from openeas.gateway.http.proxy import ClientConnection

DEFAULT_COOLDOWN_S = 1.5  # seconds a replica whose connect failed is avoided
RESOLVED_MAX = 4096  # request targets remembered by `ProxyContext.resolve`
RESOLVED_URL_MAX_BYTES = 512  # longer request targets are resolved every time, never remembered

# Limits on what a client may send before its request is routed (nginx's defaults where it has one).
DEFAULT_MAX_URL_BYTES = 8 * 1024  # request target; longer: 414 (large_client_header_buffers)
DEFAULT_MAX_HEADER_BYTES = 32 * 1024  # all header names and values together; more: 431
DEFAULT_MAX_HEADERS = 100  # header lines; more: 431
DEFAULT_HEAD_TIMEOUT_S = 30.0  # a request head must be complete this long after it starts (408)
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this (nginx)
DEFAULT_BODY_TIMEOUT_S = 60.0  # longest gap between two reads of a request body (408)
MAX_CONNECTIONS_CEILING = 10_000
FD_HEADROOM = 64  # descriptors kept for listeners, logs, the routing source


@dataclass(frozen=True)
class ClientLimits:
    """The limits a gateway puts on its clients (``ProxyContext`` keyword arguments of the same
    names); ``python -m openeas.gateway`` has a flag for each."""

    max_url_bytes: int = DEFAULT_MAX_URL_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int | None = None  # None: default_max_connections()


def default_max_connections() -> int:
    """Client connections accepted at once: each may hold a replica connection too (2 descriptors)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    return max(16, min(MAX_CONNECTIONS_CEILING, (soft - FD_HEADROOM) // 2))


class ProxyContext:
    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        max_date_skew_s: float = DEFAULT_MAX_DATE_SKEW_S,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
        keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None:
        self.routes: dict[str, RouteState] = {}  # swapped whole by the gateway, never mutated
        self.groups: dict[str, GroupState] = {}  # service groups (split.py), swapped with the routes
        self.metrics = metrics
        self.max_date_skew_s = max_date_skew_s  # seconds between a signed request's Date and now
        self.cooldown_s = cooldown_s
        # Requests waiting for a routable replica, one queue per service that ever held one
        # (activator.py); the route's max_held and hold_timeout_s bound them.
        self.holds: dict[str, HoldQueue] = {}
        self.on_hold: Callable[[str], object] | None = None  # called with the service when one is held
        # Called with the service when its in-flight count reaches its ServiceMetrics.push_at.
        self.on_jump: Callable[[str], object] | None = None
        # Async services' queues (gateway/asyncq/queues.py); made when the first async service is routed.
        self.queues: AsyncQueues | None = None
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        # Bytes of one request head the parser may buffer before the head is refused (431): a
        # single header line is buffered whole by httptools before it reaches the proxy.
        self.max_head_bytes = max_url_bytes + max_header_bytes + 4 * max_headers + 64
        self.head_timeout_s = head_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = default_max_connections() if max_connections is None else max_connections
        # How often the sweep looks for connections past their deadline: deadlines are kept
        # within this many seconds, and no timer is made per request or per read.
        self.sweep_s = max(0.01, min(1.0, min(head_timeout_s, keepalive_timeout_s, body_timeout_s) / 10))
        self._sweeping = False
        self.connections: set[ClientConnection] = set()
        self.watches = 0  # async watches (SSE, WebSocket) handed over: they count against max_connections
        # Request target → (service, upstream path), or None outside /api/predict. Clients repeat
        # the same few URLs, so most requests skip the split.
        self.targets: dict[bytes, tuple[str, bytes] | None] = {}
        metrics.limits = self.limits()

    def wake_held(self) -> None:
        """The routes changed: send the held requests that now have a replica (the push path)."""
        for queue in self.holds.values():
            if queue.entries:
                queue.wake(self)

    def limits(self) -> dict[str, float]:
        """The settings shown on /metrics as gauges (openeas_gateway_limit{name=...})."""
        return {f.name: getattr(self, f.name) for f in fields(ClientLimits)}

    def resolve(self, url: bytes) -> tuple[str, bytes] | None:
        """Split ``url`` and remember it if short (the hot path reads ``targets`` first)."""
        target = split_predict_path(url)
        if len(url) <= RESOLVED_URL_MAX_BYTES:
            targets = self.targets
            if len(targets) >= RESOLVED_MAX:
                targets.clear()  # random URLs must not grow it without bound
            targets[url] = target
        return target

    # --- deadlines ------------------------------------------------------------------------------
    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the sweep runs (called when a connection opens)."""
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self.sweep_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [c for c in self.connections if c.deadline <= now]
        if late:
            self._expire(late, now, loop)
        if self.connections:
            loop.call_later(self.sweep_s, self._sweep, loop)
        else:
            self._sweeping = False  # started again by the next connection


    def _expire(self, late: list[ClientConnection], now: float, loop: asyncio.AbstractEventLoop) -> None:
        """Expire ``late`` connections, EXPIRE_BATCH per loop turn: thousands of slow clients that
        time out together must not stall the others' requests for one long callback."""
        for conn in late[:EXPIRE_BATCH]:
            if conn.deadline <= now:  # not moved or closed meanwhile
                conn.expire()
        if len(late) > EXPIRE_BATCH:
            loop.call_soon(self._expire, late[EXPIRE_BATCH:], now, loop)


EXPIRE_BATCH = 64  # connections expired per loop turn
NEVER = math.inf  # a deadline that never comes (a request waiting for its replica's answer)
