"""The async queue's values: a queued request (`Message`), its stored answer (`Result`), a dead
letter, the per-service settings (`QueueSettings`) and what a queue holds (`Backlog`,
`Attributes`).

Plain dataclasses, standard library only: the gateway process (which imports neither SQLAlchemy
nor pydantic) enqueues and dispatches with them, and the control plane reads backlogs with them.
Times are float seconds since the epoch; sizes are bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# Defaults of the spec's `queue` block (docs/async.md says why each is what it is).
DEFAULT_MAX_DELIVERY = 5  # attempts before a request goes to the dead-letter list (EAS max_delivery)
DEFAULT_WINDOW = 5  # requests in flight per replica (EAS: the subscription window, worker_threads)
DEFAULT_MAX_LENGTH = 10_000  # requests queued + in flight per service; more get 429
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024  # largest request body accepted into the queue
DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024  # largest replica answer stored as a result
DEFAULT_RESULT_TTL_S = 86_400.0  # a stored result is kept one day, then expires
DEFAULT_ATTEMPT_TIMEOUT_S = 600.0  # one call to a replica; longer counts as a failed attempt


class State(IntEnum):
    """Where a request is. The numbers are stored (SQLite) and must not change."""

    QUEUED = 0  # waiting for a replica
    IN_FLIGHT = 1  # leased by a dispatcher and sent to a replica
    DONE = 2  # its result is stored
    DEAD = 3  # failed max_delivery attempts: in the dead-letter list with its last error
    READ = 4  # done, and its result was read with _auto_delete_=true (deleted)


@dataclass(frozen=True)
class QueueSettings:
    """One async service's queue, as the gateway reads it from the route-settings record."""

    max_delivery: int = DEFAULT_MAX_DELIVERY
    window: int = DEFAULT_WINDOW
    max_length: int = DEFAULT_MAX_LENGTH
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> QueueSettings:
        d = data or {}
        return QueueSettings(
            max_delivery=int(d.get("max_delivery") or DEFAULT_MAX_DELIVERY),
            window=int(d.get("window") or DEFAULT_WINDOW),
            max_length=int(d.get("max_length") or DEFAULT_MAX_LENGTH),
            max_payload_bytes=int(d.get("max_payload_bytes") or DEFAULT_MAX_PAYLOAD_BYTES),
            max_result_bytes=int(d.get("max_result_bytes") or DEFAULT_MAX_RESULT_BYTES),
            result_ttl_s=float(d.get("result_ttl_s") or DEFAULT_RESULT_TTL_S),
            attempt_timeout_s=float(d.get("attempt_timeout_s") or DEFAULT_ATTEMPT_TIMEOUT_S),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_delivery": self.max_delivery,
            "window": self.window,
            "max_length": self.max_length,
            "max_payload_bytes": self.max_payload_bytes,
            "max_result_bytes": self.max_result_bytes,
            "result_ttl_s": self.result_ttl_s,
            "attempt_timeout_s": self.attempt_timeout_s,
        }


@dataclass
class Message:
    """One accepted request: what the dispatcher sends to a replica."""

    service: str
    request_id: str
    method: str
    path: str  # the replica's path and query (queue parameters such as _priority_ removed)
    headers: list[tuple[str, str]]  # sent to the replica as they came (hop-by-hop ones removed)
    body: bytes
    priority: int = 0  # 1: before every priority-0 request (EAS _priority_=1)
    enqueued_at: float = 0.0
    index: int = 0  # the queue index, assigned on enqueue (EAS's "index")
    attempts: int = 0  # deliveries so far, this one included once it is claimed
    tags: dict[str, str] = field(default_factory=dict)  # EAS tags: the request's other query parameters
    lease: str = ""  # backend-specific handle of the current delivery (a Redis stream entry id)


@dataclass
class Result:
    """A request's stored answer: the replica's status, headers and body."""

    service: str
    request_id: str
    index: int  # the request's queue index
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    attempts: int
    enqueued_at: float
    finished_at: float
    sink_index: int = 0  # position in the service's sink (results in the order they were stored)
    tags: dict[str, str] = field(default_factory=dict)
    ttl_s: float = DEFAULT_RESULT_TTL_S  # seconds the result is kept after finished_at

    @property
    def content_type(self) -> str:
        for k, v in self.headers:
            if k.lower() == "content-type":
                return v
        return "application/octet-stream"


@dataclass(frozen=True)
class DeadLetter:
    """A request that failed ``max_delivery`` attempts."""

    service: str
    request_id: str
    index: int
    attempts: int
    last_error: str
    enqueued_at: float


@dataclass(frozen=True)
class Backlog:
    """What waits for or occupies a service's replicas: the autoscaler's ``backlog`` metric."""

    queued: int  # accepted, not yet sent to a replica
    in_flight: int  # sent to a replica, no result yet

    @property
    def total(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class Attributes:
    """A service's queue as ``GET /api/predict/<svc>?_attrs_=true`` shows it."""

    queued: int
    in_flight: int
    dead: int
    results: int  # stored results not expired
    oldest_age_s: float | None  # seconds the oldest queued request has waited; None: none queued
    last_index: int  # the highest queue index given so far (0: none)
    max_length: int

    def eas_dict(self, consumers: int) -> dict[str, str]:
        """EAS's attribute names (strings, as the EAS SDK's ``attributes()`` reads them)."""
        oldest = "" if self.oldest_age_s is None else f"{self.oldest_age_s:.3f}"
        return {
            "meta.maxLength": str(self.max_length),
            "stream.length": str(self.queued + self.in_flight),
            "stream.queued": str(self.queued),
            "stream.inFlight": str(self.in_flight),
            "stream.deadLetters": str(self.dead),
            "stream.results": str(self.results),
            "stream.oldestAgeSeconds": oldest,
            "stream.lastEntry": str(self.last_index),
            "consumers.stats.total": str(consumers),
        }


def request_status(state: State | None) -> str:
    """The word the API shows for a request's state (None: unknown request id)."""
    if state is None:
        return "unknown"
    return {
        State.QUEUED: "queued",
        State.IN_FLIGHT: "in_flight",
        State.DONE: "done",
        State.DEAD: "dead",
        State.READ: "read",
    }[state]
