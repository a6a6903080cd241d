"""A service group's traffic as the control plane reads it: each member's live answers (by
status, by latency; cumulative since each gateway started) from the gateways' counters datagram
(`GatewayStats.group`, the one channel from gateway to control plane), and the window
arithmetic the staged rollout needs: what a member's live traffic added since a starting snapshot
(`member_live`, `window`).

Collection (`DatagramGroupCounters`, a read of what the receiver holds) is apart from the
arithmetic (pure). The gateway's ``GET /groups/<group>`` shows the same counters (and mirrored
traffic, drops and compared pairs) to people: ``openeas group describe`` and ``group compare``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from openeas.kernel.rollout import Observation
from openeas.telemetry.gateway_stats import GatewayStats, MemberSample
from openeas.telemetry.latency import bucket_delta, quantile, success_ratio


class GroupCounters(Protocol):
    def members(self, group: str) -> Mapping[str, MemberSample] | None:
        """Each member's live traffic, or None when it cannot be known now (no gateway reports)."""
        ...


class DatagramGroupCounters:
    """The members' counters as the live gateways last reported them (summed), read at the
    receiver's clock."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    def members(self, group: str) -> Mapping[str, MemberSample] | None:
        return self.stats.group(group, self.stats.clock())


def member_live(
    members: Mapping[str, MemberSample] | None, member: str
) -> tuple[dict[str, int], list[int]] | None:
    """(answers by status code, histogram buckets) of a member's live traffic; None without data,
    empty when the gateways know the group but counted nothing for the member yet."""
    if members is None:
        return None
    m = members.get(member)
    if m is None:
        return {}, []
    return dict(m.by_code), list(m.buckets)


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
