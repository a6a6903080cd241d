"""The queue backend protocol (`QueueBackend`) and its registry of implementations by URL scheme.

A backend keeps every accepted request until it has exactly one stored result or is dead:

- ``enqueue`` returns only once the request is durable (committed to SQLite, acknowledged by
  Redis): an answered ``POST`` survives a kill -9 of the gateway right after;
- ``claim`` leases up to ``n`` queued requests of a service to one consumer (priority first, then
  arrival order) and counts the attempt; a lease lasts ``lease_s`` unless ``renew`` extends it;
- ``complete`` stores the result and removes the request, once: a second completion of the same
  request (a redelivered copy that also finished) stores nothing and returns False;
- ``fail`` ends a failed attempt: the request is queued again, or dead once it has had
  ``max_delivery`` attempts (with the error, for the dead-letter list);
- ``reclaim`` takes back expired leases (their consumer died or hung): queued again, or dead;
- ``release`` gives leases back without counting the attempt (a dispatcher that stops).

Implementations: ``sqlite`` (embedded default, :mod:`openeas.queue.sqlite`) and ``redis``
(several gateways, :mod:`openeas.queue.redis_streams`). Both pass the same behaviour suite
(tests/test_queue_backends.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from openeas.queue.model import Attributes, Backlog, DeadLetter, Message, Result, State

DEFAULT_LEASE_S = 5.0  # seconds a claimed request stays leased without a renewal
RENEW_EVERY_S = 1.0  # how often a dispatcher renews the leases of its requests in flight


class QueueBackend(Protocol):
    name: str  # the registry name ("sqlite", "redis")

    async def enqueue(self, msg: Message) -> int:
        """Store ``msg`` durably; its queue index (also set on ``msg.index``)."""
        ...

    async def claim(self, service: str, consumer: str, n: int, lease_s: float, now: float) -> list[Message]:
        """Lease up to ``n`` queued requests of ``service`` to ``consumer``, priority first."""
        ...

    async def complete(self, msg: Message, result: Result) -> bool:
        """Store the result of a claimed request; False when it already had one (or is gone)."""
        ...

    async def fail(self, msg: Message, error: str, max_delivery: int, now: float) -> State:
        """A failed attempt: QUEUED again, or DEAD after ``max_delivery`` attempts."""
        ...

    async def release(self, msgs: list[Message]) -> None:
        """Give leases back uncounted (the dispatcher stops before their answers came)."""
        ...

    async def renew(self, consumer: str, msgs: list[Message], lease_s: float, now: float) -> None:
        """Extend the leases of ``consumer``'s requests in flight."""
        ...

    async def reclaim(self, service: str, max_delivery: int, now: float) -> int:
        """Expired leases of ``service`` → QUEUED (or DEAD past ``max_delivery``); how many."""
        ...

    async def lookup(self, service: str, request_id: str) -> tuple[State | None, Result | None]:
        """The request's state (None: unknown) and its result when DONE."""
        ...

    async def lookup_index(self, service: str, index: int) -> tuple[State | None, Result | None]:
        """As `lookup`, by queue index."""
        ...

    async def mark_read(self, service: str, request_ids: list[str]) -> int:
        """Delete these results (EAS ``_auto_delete_``, commit, delete); how many were there."""
        ...

    async def results_after(self, service: str, sink_index: int, limit: int) -> list[Result]:
        """Stored results of ``service`` with a sink index above ``sink_index``, oldest first."""
        ...

    async def put_result(self, result: Result) -> int:
        """Store a result written straight into the sink (EAS's ``put`` on the sink queue): a new
        sink index (also set on ``result.sink_index``); 0 when its request id already has one."""
        ...

    async def lookup_sink(self, service: str, sink_index: int) -> tuple[State | None, Result | None]:
        """As `lookup`, by sink index."""
        ...

    async def truncate_results(self, service: str, below: int) -> int:
        """Delete the unread results with a sink index below ``below`` (EAS ``truncate``); how many."""
        ...

    async def sink_stats(self, service: str) -> tuple[int, int]:
        """(unread results, the highest sink index given so far: 0 none) of ``service``'s sink."""
        ...

    async def messages_from(self, service: str, index: int, limit: int) -> list[Message]:
        """Up to ``limit`` requests of ``service`` still queued or in flight, queue index ≥
        ``index``, in index order (EAS ``get`` by index on the input queue)."""
        ...

    async def find_message(self, service: str, request_id: str) -> Message | None:
        """The request ``request_id`` while it is queued or in flight; None otherwise."""
        ...

    async def delete_messages(self, service: str, indexes: list[int]) -> int:
        """Remove these requests from the input queue, whatever their state (queued, in flight,
        dead): a delivery in flight then stores nothing. How many were there."""
        ...

    async def truncate_messages(self, service: str, below: int) -> int:
        """Remove every request with a queue index below ``below`` (EAS ``truncate``); how many."""
        ...

    async def attributes(self, service: str, max_length: int, now: float) -> Attributes: ...

    async def backlog(self, service: str) -> Backlog: ...

    async def dead_letters(self, service: str, limit: int) -> list[DeadLetter]: ...

    async def redrive(self, service: str, request_ids: list[str] | None) -> int:
        """Dead requests (all, or these) → QUEUED with their attempts reset; how many."""
        ...

    async def expire(self, now: float) -> int:
        """Delete results past their TTL; how many."""
        ...

    async def close(self) -> None: ...


BackendFactory = Callable[[str, Path], QueueBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make ``scheme://...`` URLs open with ``factory(url, data_dir)``."""
    _REGISTRY[scheme] = factory


def backend_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def default_url(data_dir: Path) -> str:
    """The embedded default: a SQLite queue next to the store."""
    return f"sqlite:///{Path(data_dir) / 'queue.db'}"


def open_backend(url: str | None, data_dir: Path) -> QueueBackend:
    """The backend ``url`` names (``sqlite:///path``, ``redis://host:port/db``); the embedded
    default when None. An unknown scheme raises ValueError naming the known ones."""
    _load_builtin()
    url = url or default_url(data_dir)
    scheme = url.partition("://")[0]
    factory = _REGISTRY.get(scheme)
    if factory is None:
        raise ValueError(f"unknown queue backend {scheme!r} in {url!r}: use one of {backend_names()}")
    return factory(url, Path(data_dir))


def _load_builtin() -> None:
    if "sqlite" not in _REGISTRY:
        from openeas.queue import sqlite

        register_backend("sqlite", sqlite.from_url)
    if "redis" not in _REGISTRY:
        register_backend("redis", _redis)


def _redis(url: str, data_dir: Path) -> QueueBackend:
    from openeas.queue import redis_streams  # imports the redis client only when used

    return redis_streams.from_url(url, data_dir)
