"""The ``queue`` block of an async service's spec (EAS ``metadata.type: Async``; docs/async.md).

Units are in the names (KiB, ms, s); a field left out takes the default docs/async.md gives, and
``openeas.store.routing.queue_settings`` turns the block into the gateway's `QueueSettings`.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from openeas.spec.numbers import CheckedNumbers


class _Model(CheckedNumbers):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # as every spec model


class QueueSide(_Model):
    """One of an async service's two queues (EAS: ``queue.source`` for requests, ``queue.sink``
    for results)."""

    max_length: int | None = Field(
        default=None,
        ge=1,
        description=(
            "source: requests queued + in flight per service, 429 with Retry-After above; "
            "default 10000"
        ),
    )
    max_payload_size_kb: int | None = Field(
        default=None,
        ge=1,
        le=1024 * 1024,
        description=(
            "KiB: source: largest request body (413 above); sink: largest stored answer; "
            "default 8192"
        ),
    )


class QueueConfig(_Model):
    """EAS's ``queue`` block of an async service (``metadata.type: Async``); docs/async.md.

    EAS's resources of its queue sub-service (``cpu``, ``memory``, ``resource``, ``min_replica``)
    are accepted and kept: the embedded queue runs inside the gateway and needs none."""

    max_delivery: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="attempts before a request goes to the dead-letter list; default 5",
    )
    window: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="OpenEAS: requests in flight per replica; default metadata.rpc.worker_threads, else 5",
    )
    attempt_timeout_ms: int | None = Field(
        default=None,
        ge=1,
        description=(
            "OpenEAS: milliseconds one replica call may take; default metadata.rpc.keepalive, "
            "else 600000"
        ),
    )
    result_ttl_s: int | None = Field(
        default=None, ge=1, description="OpenEAS: seconds a stored result is kept; default 86400"
    )
    source: QueueSide = Field(default_factory=QueueSide)
    sink: QueueSide = Field(default_factory=QueueSide)
