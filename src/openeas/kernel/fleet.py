"""The gateway fleet: every gateway registered in the store, live or not, and which of them has
applied a routing version. Values and pure decisions only (standard library): the gateway writes
its row (gateway/routing/registry.py), the store reads them (store/gateways.py), the control
plane waits on them (gateway_fleet.py).

A gateway's row: its id, the URL it advertises, host, pid, start time, a heartbeat (every
:data:`HEARTBEAT_S`) and the routing version it has applied. Times are the *database's* clock
(epoch seconds), so gateways on machines whose clocks disagree are judged alike. A gateway is
live while its heartbeat is at most :data:`LIVE_S` old.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

GATEWAYS_TABLE = "gateways"  # the store's table (schema v14)
# PostgreSQL channel a gateway notifies (payload: its id) after it wrote a newer applied version:
# the control plane's wait wakes on it instead of polling.
ACK_CHANNEL = "openeas_gateway_acks"
HEARTBEAT_S = 1.0  # seconds between two heartbeats of one gateway
# A gateway whose heartbeat is older than this is not live, seconds: three missed heartbeats. An
# API call waits only for live gateways; a dead one is shown, never waited for.
LIVE_S = 3.0
# A gateway silent this long is forgotten (its row deleted by the next gateway that starts), seconds.
FORGET_S = 3600.0
# meta keys: where the active control plane receives remote gateways' counters ("host:port",
# UDP), and the key that signs them (encrypted with the store's secret key).
STATS_ADDR_KEY = "gateway_stats_udp"
STATS_KEY_KEY = "gateway_stats_key"


@dataclasses.dataclass(frozen=True)
class GatewayRecord:
    """One gateway's row in the store."""

    id: str
    url: str  # the URL it advertises (clients and the balancer reach it there)
    host: str  # the machine's host name
    pid: int
    started_at: float  # epoch seconds (database clock)
    heartbeat_at: float  # epoch seconds (database clock) of its last heartbeat
    applied_version: int  # the routing version its table has (-1: none yet)

    def age_s(self, now: float) -> float:
        """Seconds since its last heartbeat (``now``: the database clock)."""
        return max(0.0, now - self.heartbeat_at)

    def live(self, now: float, live_s: float = LIVE_S) -> bool:
        return self.age_s(now) <= live_s

    def to_dict(self, now: float, version: int, live_s: float = LIVE_S) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "applied_version": self.applied_version,
            "routing_version": version,
            "lag": max(0, version - self.applied_version),  # routing versions behind the store
            "heartbeat_age_s": round(self.age_s(now), 3),
            "live": self.live(now, live_s),
        }


def lagging(
    records: Iterable[GatewayRecord], version: int, now: float, live_s: float = LIVE_S
) -> list[GatewayRecord]:
    """The live gateways that have not applied ``version`` yet (pure; ``now``: database clock)."""
    return [r for r in records if r.live(now, live_s) and r.applied_version < version]


# The database's clock, epoch seconds, by dialect: heartbeats and ages use it, never a host's.
NOW_SQL = {
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}
