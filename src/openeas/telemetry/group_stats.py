"""A service group's traffic as the control plane reads it from the gateway (``GET
/groups/<group>`` with the group's token: cumulative counters per member since the gateway
started), and the window arithmetic the staged rollout needs: what a member's live traffic
added since a starting snapshot (`member_live`, `window`).

Collection (`GatewayGroupStats.fetch`, blocking I/O) is apart from the arithmetic (pure)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from openeas.kernel.rollout import Observation
from openeas.telemetry.latency import bucket_delta, quantile, success_ratio

FETCH_TIMEOUT_S = 2.0  # seconds to wait for the gateway


class GroupStatsSource(Protocol):
    def fetch(self, group: str) -> dict[str, Any] | None:
        """The group's counters, or None when they cannot be read now."""
        ...


class GatewayGroupStats:
    """Reads a group's counters from the gateway at ``gateway_url`` with the group's token."""

    def __init__(
        self, gateway_url: str, token: Callable[[str], str], timeout_s: float = FETCH_TIMEOUT_S
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.token = token  # group name → its token (from the store)
        self.timeout_s = timeout_s

    def fetch(self, group: str) -> dict[str, Any] | None:
        try:
            req = urllib.request.Request(
                f"{self.gateway_url}/groups/{group}", headers={"Authorization": self.token(group)}
            )
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return None
        except Exception:  # the group went away (NotFound from the store) between two looks
            return None


def member_live(raw: Mapping[str, Any] | None, member: str) -> tuple[dict[str, int], list[int]] | None:
    """(answers by status code, histogram buckets) of a member's live traffic; None without data."""
    if raw is None:
        return None
    m = (raw.get("members") or {}).get(member)
    if m is None:
        return {}, []
    live = m.get("live") or {}
    return {str(k): int(v) for k, v in (live.get("by_code") or {}).items()}, list(live.get("buckets") or [])


def window(
    now_codes: Mapping[str, int],
    now_buckets: list[int],
    since_codes: Mapping[str, int],
    since_buckets: list[int] | None,
) -> Observation:
    """What a member's live traffic added since a snapshot (counters that went down: a gateway
    restart, counted from 0)."""
    reset = any(now_codes.get(k, 0) < v for k, v in since_codes.items())
    codes = dict(now_codes) if reset else {k: v - since_codes.get(k, 0) for k, v in now_codes.items()}
    buckets = bucket_delta(now_buckets, None if reset else since_buckets)
    requests = sum(codes.values())
    p99 = quantile(buckets, 0.99) if buckets else None
    return Observation(
        requests=requests,
        success=success_ratio(codes),
        p99_ms=None if p99 is None else p99 * 1000,
    )
