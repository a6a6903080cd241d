"""The spec's ``metadata`` block: name, replicas, resources, request handling (``rpc``), rolling
updates, the replica runtime and the group the service joins."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from openeas.kernel.routing import BALANCER_NAMES
from openeas.spec.base import NAME_RE, Number, SpecModel, is_stored
from openeas.spec.standby import Standby


class RpcConfig(SpecModel):
    keepalive: int | None = Field(
        default=None, ge=1, description="request timeout in milliseconds (EAS unit); 408 when exceeded"
    )
    max_queue_size: int | None = Field(
        default=None,
        ge=1,
        description=(
            "requests each gateway holds for the service while it has no routable replica "
            "(scaling from zero, a replica restarting); more get 429 with Retry-After; default 100"
        ),
    )
    hold_timeout_ms: int | None = Field(
        default=None,
        ge=1,
        le=3_600_000,
        description=(
            "OpenEAS: milliseconds a held request waits for a routable replica before a 503; "
            "default 120000 (covers the slowest cold start tested, vLLM on a CPU)"
        ),
    )
    rate_limit: int | None = Field(
        default=None, ge=0, description="requests per second per service; 0 (EAS's default) = no limit"
    )
    max_body_bytes: int | None = Field(
        default=None, ge=1, description="OpenEAS: largest request body in bytes (413 above); default 64 MiB"
    )
    resend_unanswered: bool = Field(
        default=True,
        description=(
            "OpenEAS: when a replica closes the connection after the request was sent and before "
            "any byte of answer, resend the request to another replica; set false for services "
            "whose POSTs are not safe to repeat"
        ),
    )


class RollingStrategy(SpecModel):
    max_surge: int = Field(default=1, ge=0, description="replicas above desired during an update")
    max_unavailable: int = Field(default=0, ge=0, description="replicas below desired during an update")


class EasSection(SpecModel):
    termination_grace_period: Number = Field(
        default=30.0, ge=0, description="seconds between SIGTERM and SIGKILL when a replica stops"
    )


RuntimeName = Literal["auto", "process", "container"]

MAX_REPLICAS = 1000
"""Most replicas a service may ask for (metadata.instance, a scale): a sanity cap above which a
request is a 400 naming it. How many of them run is the node's capacity (controller/capacity.py)."""


class Metadata(SpecModel):
    name: str = Field(json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,62}$"})  # JSON Schema: `$` = end
    instance: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="initial replica count")
    cpu: Number | None = Field(default=None, gt=0, description="cores per replica")
    memory: int | None = Field(default=None, gt=0, description="MB per replica")
    gpu: int | None = Field(default=None, ge=0, description="GPUs per replica")
    type: str | None = Field(
        default=None,
        description="'Async': requests go through a durable queue, results by request id (docs/async.md)",
    )
    rpc: RpcConfig = Field(default_factory=RpcConfig)
    rolling_strategy: RollingStrategy = Field(default_factory=RollingStrategy)
    eas: EasSection = Field(default_factory=EasSection)
    standby: Standby = Field(
        default_factory=Standby, description="OpenEAS: warmed replicas out of routing (docs/cold-start.md)"
    )
    replica_runtime: RuntimeName = Field(
        default="auto",
        description=(
            "OpenEAS: what runs the replicas: 'process' (the command on this host), 'container' "
            "(the image, through podman or docker) or 'auto' (a container when `image` is set and "
            "an engine is present, else a process)"
        ),
    )

    group: str | None = Field(
        default=None,
        description=(
            "EAS: the service group the service joins at deploy (created with it as its only "
            "member when absent; else it joins with weight 0)"
        ),
        json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,62}$"},
    )

    balancer: str | None = Field(
        default=None,
        description=(
            "OpenEAS: how the gateway picks a replica for each request, by name (docs/balancers.md); "
            "default least-request"
        ),
    )

    @field_validator("balancer")
    @classmethod
    def _balancer(cls, v: str | None) -> str | None:
        if v is not None and v not in BALANCER_NAMES:
            raise ValueError(f"unknown balancer {v!r}; known: {', '.join(sorted(BALANCER_NAMES))}")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not NAME_RE.fullmatch(v) and not is_stored(info):
            raise ValueError(
                "a group name starts with a lowercase letter and has only lowercase letters, digits and '_'"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str, info: ValidationInfo) -> str:
        if not NAME_RE.fullmatch(v) and not is_stored(info):
            raise ValueError(
                "must start with a lowercase letter and contain only lowercase letters, digits "
                "and '_' (at most 63 characters)"
            )
        return v
