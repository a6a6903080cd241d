"""The service groups of a routing table, as plain values: what the gateway needs to split and
mirror a group's traffic, read from the store's ``groups`` and ``group_members`` tables (or a
routing file) and nothing else. Standard library only (the gateway imports no pydantic).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_REGION_HEADER = "X-Region"


@dataclass(frozen=True)
class MemberMatch:
    """Requests that go to a member whatever the weights; every given part must match."""

    headers: tuple[tuple[str, str], ...] = ()  # (name, exact value); names compared in any case
    user_agent: str | None = None  # regular expression searched in User-Agent
    region: tuple[str, ...] = ()  # values of the group's region header

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> MemberMatch | None:
        if not data:
            return None
        return MemberMatch(
            headers=tuple((str(k), str(v)) for k, v in (data.get("headers") or {}).items()),
            user_agent=data.get("user_agent"),
            region=tuple(str(r) for r in (data.get("region") or ())),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.user_agent is not None:
            out["user_agent"] = self.user_agent
        if self.region:
            out["region"] = list(self.region)
        return out


@dataclass(frozen=True)
class GroupMember:
    service: str
    weight: int = 0  # 0..1000, relative
    mirror_weight: int = 0  # percent of the group's requests copied to this member
    match: MemberMatch | None = None


@dataclass(frozen=True)
class GroupDef:
    name: str
    token: str | None  # plaintext (decrypted by the source)
    members: tuple[GroupMember, ...] = ()
    traffic_mode: str = "customized"  # customized: weights; auto: each member's routable replicas
    region_header: str = DEFAULT_REGION_HEADER

    @staticmethod
    def from_dict(name: str, data: Mapping[str, Any]) -> GroupDef:
        return GroupDef(
            name=name,
            token=data.get("token"),
            members=tuple(
                GroupMember(
                    service=str(m["service"]),
                    weight=int(m.get("weight", 0)),
                    mirror_weight=int(m.get("mirror_weight", 0)),
                    match=MemberMatch.from_dict(m.get("match")),
                )
                for m in data.get("members", ())
            ),
            traffic_mode=str(data.get("traffic_mode") or "customized"),
            region_header=str(data.get("region_header") or DEFAULT_REGION_HEADER),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "traffic_mode": self.traffic_mode,
            "region_header": self.region_header,
            "members": [
                {
                    "service": m.service,
                    "weight": m.weight,
                    "mirror_weight": m.mirror_weight,
                    **({"match": m.match.to_dict()} if m.match is not None else {}),
                }
                for m in self.members
            ],
        }


_GROUPS = "SELECT name, traffic_mode, region_header, token_enc FROM groups"
_MEMBERS = (
    'SELECT "group", service, weight, mirror_weight, match FROM group_members ORDER BY "group", position'
)
_HAS_GROUPS = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='group_members'"


def load_groups(db: sqlite3.Connection, token: Any) -> dict[str, GroupDef]:
    """The groups in the store (``token(ciphertext) -> plaintext``); none in a database that
    predates them (schema v3)."""
    if db.execute(_HAS_GROUPS).fetchone() is None:
        return {}
    members: dict[str, list[GroupMember]] = {}
    for group, service, weight, mirror_weight, match in db.execute(_MEMBERS):
        m = json.loads(match) if isinstance(match, str) else match
        members.setdefault(group, []).append(
            GroupMember(str(service), int(weight), int(mirror_weight), MemberMatch.from_dict(m))
        )
    out = {}
    for name, mode, region_header, token_enc in db.execute(_GROUPS):
        out[name] = GroupDef(
            name=name,
            token=token(token_enc),
            members=tuple(members.get(name, ())),
            traffic_mode=mode,
            region_header=region_header or DEFAULT_REGION_HEADER,
        )
    return out
