"""Async mode: a durable queue in front of an async service's replicas (SQLite by default,
Redis Streams for several gateways), the dispatcher that feeds Ready replicas from it, and the
backlog the autoscaler scales on. docs/async.md has the protocol and the guarantees."""

from openeas.queue.base import (
    DEFAULT_LEASE_S,
    QueueBackend,
    backend_names,
    default_url,
    open_backend,
    register_backend,
)
from openeas.queue.model import Attributes, Backlog, DeadLetter, Message, QueueError, Result, State

__all__ = [
    "DEFAULT_LEASE_S",
    "Attributes",
    "Backlog",
    "DeadLetter",
    "Message",
    "QueueBackend",
    "QueueError",
    "Result",
    "State",
    "backend_names",
    "default_url",
    "open_backend",
    "register_backend",
]
