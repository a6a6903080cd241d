"""Owns what every client connection of one gateway shares (`ProxyContext`): the current routes
(swapped whole on each routing-table change), the metrics, the proxy's settings, the open client
connections and the cache of resolved request targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openeas.gateway.auth import DEFAULT_MAX_DATE_SKEW_S
from openeas.gateway.metrics import GatewayMetrics
from openeas.gateway.resolve import split_predict_path
from openeas.gateway.routes import RouteState

if TYPE_CHECKING:
    from openeas.gateway.proxy import ClientConnection

DEFAULT_COOLDOWN_S = 1.5  # seconds a replica whose connect failed is avoided
DEFAULT_HOLD_S = 2.0  # seconds a request with no reachable replica waits for one before a 503
RESOLVED_MAX = 4096  # request targets remembered by `ProxyContext.resolve`


class ProxyContext:
    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        max_date_skew_s: float = DEFAULT_MAX_DATE_SKEW_S,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        hold_s: float = DEFAULT_HOLD_S,
    ) -> None:
        self.routes: dict[str, RouteState] = {}  # swapped whole by the gateway, never mutated
        self.metrics = metrics
        self.max_date_skew_s = max_date_skew_s  # seconds between a signed request's Date and now
        self.cooldown_s = cooldown_s
        # Seconds a request waits for a replica when none is reachable (one just turning Ready,
        # or restarting after a crash) before it gets a 503: requests are held, not dropped.
        self.hold_s = hold_s
        self.connections: set[ClientConnection] = set()
        # Request target → (service, upstream path), or None outside /api/predict. Clients repeat
        # the same few URLs, so most requests skip the split.
        self.targets: dict[bytes, tuple[str, bytes] | None] = {}

    def resolve(self, url: bytes) -> tuple[str, bytes] | None:
        """Split ``url`` and remember it (the hot path reads ``targets`` first)."""
        target = split_predict_path(url)
        targets = self.targets
        if len(targets) >= RESOLVED_MAX:
            targets.clear()  # random URLs must not grow it without bound
        targets[url] = target
        return target
