"""A group's stress test, member by member: which member answered each request, and the breakdown.

The gateway names the member whose replica answered a request to a group's endpoint in the
``X-OpenEAS-Member`` header (docs/groups.md); the transport reads it into ``Outcome.member``.
A request with no member named is *unattributed*: the gateway answered it itself (401, 503 with
no weighted member...), it failed before any answer (connect, reset, timeout) or it was still
unanswered at the end. Each member's count, errors and latency percentiles come from its own
answers; its share is its answers over all the requests sent (so the shares and the unattributed
share add up to 1), next to the share its weight promises (``share_percent`` of the group's
detail: weights, or ready replicas in ``auto`` mode; a request a match rule takes goes to its
member whatever the weights). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openeas.stress.histo import Histo, merged

UNATTRIBUTED = "(none)"
"""The breakdown's row for requests no member answered (the gateway's own answers, failures)."""


@dataclass
class MemberTally:
    """The answers one member gave to one step's requests."""

    done: int = 0
    ok: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    latency: Histo = field(default_factory=Histo)  # successful answers, from their due time

    def add(self, status_key: str, ok: bool, latency_s: float) -> None:
        self.done += 1
        self.by_status[status_key] += 1
        if ok:
            self.ok += 1
            self.latency.record_s(latency_s)


def tally(tallies: dict[str, MemberTally], member: str, status_key: str, ok: bool, latency_s: float) -> None:
    """Count one answer of ``member`` (a step's tallies, by member)."""
    t = tallies.get(member)
    if t is None:
        t = tallies[member] = MemberTally()
    t.add(status_key, ok, latency_s)


@dataclass(frozen=True)
class GroupInfo:
    """The group as the test began: its members and the share of requests each should get."""

    name: str
    traffic_mode: str
    expected: dict[str, float]  # member -> expected fraction of the requests (0..1)
    match_rules: bool  # a member has a match rule: a matching request ignores the weights

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> GroupInfo:
        """From a group's detail (``GET /api/v1/groups/{name}``): members' ``share_percent``."""
        members = detail.get("members") or []
        return cls(
            name=str(detail.get("name")),
            traffic_mode=str(detail.get("traffic_mode") or "customized"),
            expected={str(m["service"]): float(m.get("share_percent") or 0.0) / 100.0 for m in members},
            match_rules=any(m.get("match") for m in members),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "traffic_mode": self.traffic_mode,
            "expected_share": {k: round(v, 4) for k, v in self.expected.items()},
            "match_rules": self.match_rules,
        }


def _row(member: str, requests: int, tally_: MemberTally | None, total: int, expected: float | None,
         duration_s: float | None) -> dict[str, Any]:  # fmt: skip
    t = tally_ or MemberTally()
    lat = t.latency.summary()
    return {
        "member": member,
        "requests": requests,
        "ok": t.ok,
        "errors": requests - t.ok,
        "by_status": dict(sorted(t.by_status.items())),
        "throughput": round(t.ok / duration_s, 3) if duration_s else None,
        "p50": lat["p50"],
        "p90": lat["p90"],
        "p99": lat["p99"],
        "share": round(requests / total, 4) if total else None,
        "expected_share": None if expected is None else round(expected, 4),
    }


def breakdown(
    tallies: Mapping[str, MemberTally],
    sent: int,
    expected: Mapping[str, float] | None = None,
    duration_s: float | None = None,
) -> list[dict[str, Any]]:
    """One row per member (every expected member, answered or not, then any other member that
    answered, by name), then the unattributed row when some requests were: ``sent`` minus the
    members' answers. ``errors`` counts a member's non-2xx answers; an unattributed request is
    an error whatever happened to it."""
    expected = expected or {}
    names = [*expected, *sorted(n for n in tallies if n not in expected)]
    rows = []
    for name in names:
        t = tallies.get(name)
        rows.append(_row(name, t.done if t else 0, t, sent, expected.get(name), duration_s))
    unattributed = sent - sum(t.done for t in tallies.values())
    if unattributed > 0:
        rows.append(_row(UNATTRIBUTED, unattributed, None, sent, None, duration_s))
    return rows


def merge_tallies(steps: Iterable[Mapping[str, MemberTally]]) -> dict[str, MemberTally]:
    """The whole run's tallies from its steps'."""
    out: dict[str, MemberTally] = {}
    for step in steps:
        for name, t in step.items():
            acc = out.setdefault(name, MemberTally())
            acc.done += t.done
            acc.ok += t.ok
            acc.by_status.update(t.by_status)
            acc.latency = merged((acc.latency, t.latency))
    return out


SHARE_BAND = 0.10
"""A member's share further than this (absolute, 10 points) from its weight's is flagged."""


def share_notes(rows: Sequence[Mapping[str, Any]], info: GroupInfo, band: float = SHARE_BAND) -> list[str]:
    """Sentences on the shares: members off their weight's share by more than ``band``, and what
    match rules do to the comparison."""
    notes = []
    for r in rows:
        exp, got = r.get("expected_share"), r.get("share")
        if exp is None or got is None:
            continue
        if abs(got - exp) > band:
            notes.append(f"{r['member']}: got {got:.0%} of the requests, its weight gives it {exp:.0%}")
    if info.match_rules:
        notes.append(
            "the group has match rules: a request that matches one goes to its member whatever the "
            "weights (the expected shares count the weights only)"
        )
    return notes
