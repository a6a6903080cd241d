"""The service groups of a routing table, as plain values: what the gateway needs to split and
mirror a group's traffic. Standard library only (the gateway imports no pydantic)."""

from __future__ import annotations

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
