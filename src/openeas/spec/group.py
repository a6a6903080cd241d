"""The service-group spec: one endpoint in front of several services, with weights, match rules
and mirroring (the playbook of a model swap: canary, blue-green, shadow traffic).

``openeas deploy -f group.yaml`` takes ``{kind: ServiceGroup, name, traffic_mode, routes: [...]}``
(JSON or YAML) and applies it whole. Units and bounds:

- ``weight``: 0..1000, relative (EAS's scale); a member with weight 0 gets no unmatched traffic;
- ``mirror_weight``: 0..100, the percentage of the group's requests of which a copy goes to the
  member (its answer is discarded);
- ``match``: requests that match go to the member whatever the weights (headers by exact value,
  ``user_agent`` by an RE2 regular expression, in linear time, over at most 1024 characters,
  ``region`` by the value of ``region_header``);
- ``keep_old_hours``: how long a service that left the group's traffic is protected from a
  ``delete``/``stop`` without ``--force`` (the fastest recovery is a weight back on it).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from openeas.errors import SpecError
from openeas.linear_regex import compile_problem
from openeas.spec.load import check_shape, format_errors
from openeas.spec.models import NAME_RE
from openeas.spec.numbers import CheckedNumbers

GROUP_KIND = "ServiceGroup"
MAX_WEIGHT = 1000  # weights are 0..1000 (EAS)
MAX_MIRROR_PERCENT = 100
DEFAULT_REGION_HEADER = "X-Region"
DEFAULT_KEEP_OLD_HOURS = 48.0
MAX_ROUTES = 64
MAX_PATTERN_CHARS = 512
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token

TrafficMode = Literal["customized", "auto"]


class _Model(CheckedNumbers):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MatchRule(_Model):
    """Which requests go to a member before any weight is looked at. All given parts must match."""

    headers: dict[str, str] = Field(
        default_factory=dict, description="header name (any case) → exact value the request must carry"
    )
    user_agent: str | None = Field(
        default=None,
        description="RE2 expression searched in the User-Agent header (one over 1024 characters: no match)",
    )
    region: list[str] | None = Field(
        default=None, description="values of the group's region header (X-Region by default) that match"
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not HEADER_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return v

    @field_validator("user_agent")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > MAX_PATTERN_CHARS:
            raise ValueError(f"longer than {MAX_PATTERN_CHARS} characters")
        problem = compile_problem(v)  # matched by RE2, in linear time (openeas/linear_regex.py)
        if problem is not None:
            raise ValueError(f"not a pattern RE2 can match (no backreferences, no lookaround): {problem}")
        return v

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _something(self) -> MatchRule:
        if not self.headers and self.user_agent is None and not self.region:
            raise ValueError("give at least one of headers, user_agent, region (or leave match out)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True)


class GroupRoute(_Model):
    service: str
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT, description="relative share, 0..1000")
    mirror_weight: int = Field(
        default=0,
        ge=0,
        le=MAX_MIRROR_PERCENT,
        description="percent of the group's requests copied to this member (answers discarded)",
    )
    match: MatchRule | None = None

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_WEIGHT:
            raise ValueError(f"must be 0..{MAX_WEIGHT}, got {v}")
        return v

    @field_validator("mirror_weight", mode="before")
    @classmethod
    def _mirror(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_MIRROR_PERCENT:
            raise ValueError(f"must be a percentage 0..{MAX_MIRROR_PERCENT}, got {v}")
        return v

    @model_validator(mode="after")
    def _not_both(self) -> GroupRoute:
        if self.weight > 0 and self.mirror_weight > 0:
            raise ValueError(
                f"service '{self.service}' would mirror to itself: a member gets live traffic "
                "(weight > 0) or mirrored copies (mirror_weight > 0), not both"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "weight": self.weight}
        if self.mirror_weight:
            out["mirror_weight"] = self.mirror_weight
        if self.match is not None:
            out["match"] = self.match.to_dict()
        return out


class GroupSpec(_Model):
    kind: Literal["ServiceGroup"] = "ServiceGroup"
    name: str = Field(json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,62}$"})
    traffic_mode: TrafficMode = Field(
        default="customized",
        description="customized: the routes' weights; auto: by each member's ready replicas",
    )
    routes: list[GroupRoute] = Field(default_factory=list, max_length=MAX_ROUTES)
    region_header: str = Field(default=DEFAULT_REGION_HEADER, description="header a region match reads")
    keep_old_hours: float = Field(
        default=DEFAULT_KEEP_OLD_HOURS,
        ge=0,
        le=24 * 365,
        description="hours a service that left the group's traffic needs --force to be deleted or stopped",
    )
    token: str | None = Field(default=None, min_length=8, description="the group's token (else generated)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                "must start with a lowercase letter and contain only lowercase letters, digits "
                "and '_' (at most 63 characters)"
            )
        return v

    @field_validator("region_header")
    @classmethod
    def _region_header(cls, v: str) -> str:
        if not HEADER_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a header name")
        return v

    @model_validator(mode="after")
    def _members(self) -> GroupSpec:
        seen: set[str] = set()
        for i, r in enumerate(self.routes):
            if r.service in seen:
                raise ValueError(f"routes[{i}].service: '{r.service}' is listed twice")
            if r.service == self.name:
                raise ValueError(f"routes[{i}].service: a group cannot be its own member")
            seen.add(r.service)
        return self

    def route(self, service: str) -> GroupRoute | None:
        return next((r for r in self.routes if r.service == service), None)

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored and shown (no token)."""
        return {
            "kind": GROUP_KIND,
            "name": self.name,
            "traffic_mode": self.traffic_mode,
            "routes": [r.to_dict() for r in self.routes],
            "region_header": self.region_header,
            "keep_old_hours": self.keep_old_hours,
        }


def is_group_document(data: Any) -> bool:
    """A parsed spec file that describes a group (``kind: ServiceGroup``), not a service."""
    return isinstance(data, dict) and data.get("kind") == GROUP_KIND


def parse_group(data: Any) -> GroupSpec:
    """A validated group spec; `SpecError` with one ``field.path: reason`` line per problem."""
    if not isinstance(data, dict):
        raise SpecError(["group: must be a JSON/YAML object"])
    check_shape(data)
    try:
        return GroupSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_errors(exc)) from None

