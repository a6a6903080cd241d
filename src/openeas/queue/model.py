"""The async queue's values: a queued request (`Message`), its stored answer (`Result`), a dead
letter and what a queue holds (`Backlog`, `Attributes`). The per-service settings
(`QueueSettings`) are the kernel's (:mod:`openeas.kernel.queue`).

Plain dataclasses, standard library only: the gateway process (which imports neither SQLAlchemy
nor pydantic) enqueues and dispatches with them, and the control plane reads backlogs with them.
Times are float seconds since the epoch; sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from openeas.kernel.queue import DEFAULT_RESULT_TTL_S


class QueueError(Exception):
    """The backend could not do what was asked (unreachable Redis, a broken database file)."""


class State(IntEnum):
    """Where a request is. The numbers are stored (SQLite) and must not change."""

    QUEUED = 0  # waiting for a replica
    IN_FLIGHT = 1  # leased by a dispatcher and sent to a replica
    DONE = 2  # its result is stored
    DEAD = 3  # failed max_delivery attempts: in the dead-letter list with its last error
    READ = 4  # done, and its result was read with _auto_delete_=true (deleted)


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
