"""The routing table: what the gateway needs to know, and nothing else.

The control plane writes desired state and replica phases into the store; a `RoutingSource`
turns that into an immutable `RoutingTable` the gateway swaps in atomically. The gateway never
reads the store's internals, and tests or benchmarks can feed it a table from a JSON file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Upstream:
    """One Ready replica."""

    replica_id: str
    host: str
    port: int


@dataclass(frozen=True)
class Route:
    service: str
    token: str | None  # plaintext (decrypted by the source); None means the service needs no token
    upstreams: tuple[Upstream, ...]
    timeout_s: float | None = None  # metadata.rpc.keepalive / 1000; None = no limit; 408 when exceeded
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # 413 above this
    balancer: str = "least-request"  # name in the balancer registry


@dataclass(frozen=True)
class RoutingTable:
    version: int
    routes: Mapping[str, Route] = field(default_factory=dict)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RoutingTable:
        routes = {}
        for name, r in data.get("routes", {}).items():
            routes[name] = Route(
                service=name,
                token=r.get("token"),
                upstreams=tuple(Upstream(**u) for u in r.get("upstreams", [])),
                timeout_s=r.get("timeout_s"),
                max_body_bytes=int(r.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
                balancer=r.get("balancer", "least-request"),
            )
        return RoutingTable(version=int(data.get("version", 0)), routes=routes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "routes": {
                name: {
                    "token": r.token,
                    "upstreams": [u.__dict__ for u in r.upstreams],
                    "timeout_s": r.timeout_s,
                    "max_body_bytes": r.max_body_bytes,
                    "balancer": r.balancer,
                }
                for name, r in self.routes.items()
            },
        }


class RoutingSource(Protocol):
    def poll(self) -> RoutingTable | None:
        """Return a new table when it changed since the last call, else None. Must be cheap."""
        ...


class FileRoutingSource:
    """A routing table kept in a JSON file (benchmarks, tests); reloaded when its mtime changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mtime: float | None = None

    def poll(self) -> RoutingTable | None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        return RoutingTable.from_dict(json.loads(self.path.read_text()))
