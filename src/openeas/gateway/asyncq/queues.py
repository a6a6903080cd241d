"""Owns the gateway's side of async services (`AsyncQueues`, one per gateway, made when the first
async service appears in the routing table): the queue backend, the dispatcher that feeds the
service's Ready replicas from it, the clients waiting for a result (long-polls and watches),
the per-service queue counters and their /metrics lines.

Every routing-table swap tells the dispatcher which replicas are Ready (`routes_changed`). Every
``REFRESH_S`` the queue's attributes are read back (queued, in flight, dead, oldest age: what
/metrics shows and what bounds ``max_length``), and waiting clients look again for results
another gateway stored. A result stored by this gateway's dispatcher reaches its waiters at once
(`on_result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from openeas.gateway.telemetry.metrics import label_value
from openeas.kernel.queue import QueueSettings
from openeas.kernel.routing import Upstream
from openeas.queue.base import QueueBackend
from openeas.queue.dispatcher import Dispatcher
from openeas.queue.model import Attributes, Result

if TYPE_CHECKING:
    from openeas.gateway.routing.routes import RouteState

log = logging.getLogger("openeas.gateway.queue")

REFRESH_S = 0.25  # seconds between two reads of each async service's attributes (and waiter looks)


class ResultListener(Protocol):
    """A client waiting for results (a long-poll or a watch)."""

    def offer(self, result: Result) -> None:
        """A result this gateway just stored (any request of the service)."""
        ...

    def poll(self) -> None:
        """Look in the backend again (results stored elsewhere)."""
        ...


@dataclass
class QueueCounters:
    """One async service's queue on this gateway (/metrics)."""

    enqueued: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by reason: full, too_large, invalid_json
    results_served: int = 0  # results answered to clients (sink gets, watches)
    attributes: Attributes | None = None  # the last read (REFRESH_S)
    pending: int = 0  # enqueued here since that read (keeps max_length tight between reads)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def length(self) -> int:
        """Queued + in flight, as of the last read plus this gateway's enqueues since."""
        a = self.attributes
        return (a.queued + a.in_flight if a is not None else 0) + self.pending


class AsyncQueues:
    def __init__(self, backend: QueueBackend, *, consumer: str | None = None) -> None:
        self.backend = backend
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.dispatcher = Dispatcher(backend, self.consumer, on_result=self.on_result)
        self.settings: dict[str, QueueSettings] = {}
        self.counters: dict[str, QueueCounters] = {}
        self.listeners: dict[str, set[ResultListener]] = {}  # service → clients waiting on it
        self.on_enqueue: Callable[[str], object] | None = None  # e.g. the control plane's nudge
        self._refresher: asyncio.Task[None] | None = None

    def counters_of(self, service: str) -> QueueCounters:
        c = self.counters.get(service)
        if c is None:
            c = self.counters[service] = QueueCounters()
        return c

    def routes_changed(self, routes: dict[str, RouteState]) -> None:
        """The routing table changed: async services and their Ready replicas."""
        services: dict[str, tuple[QueueSettings, list[Upstream]]] = {}
        for name, route in routes.items():
            if route.queue is None:
                continue
            # A stopped service keeps its queue; its replicas are gone, so nothing is dispatched.
            targets = [
                u.upstream for u in route.upstreams
            ]
            services[name] = (route.queue, targets)
        self.settings = {name: s for name, (s, _) in services.items()}
        self.dispatcher.update(services)
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    def enqueued(self, service: str) -> None:
        c = self.counters_of(service)
        c.enqueued += 1
        c.pending += 1
        self.dispatcher.wake(service)
        if self.on_enqueue is not None:
            self.on_enqueue(service)

    def on_result(self, result: Result) -> None:
        for listener in list(self.listeners.get(result.service, ())):
            listener.offer(result)

    def watchers_of(self, service: str) -> int:
        """Watches of ``service`` open on this gateway (long-polls not counted)."""
        return sum(1 for w in self.listeners.get(service, ()) if getattr(w, "is_watch", False))

    def listen(self, service: str, listener: ResultListener) -> None:
        self.listeners.setdefault(service, set()).add(listener)

    def unlisten(self, service: str, listener: ResultListener) -> None:
        found = self.listeners.get(service)
        if found is not None:
            found.discard(listener)
            if not found:
                del self.listeners[service]

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            now = time.time()
            for name, settings in list(self.settings.items()):
                try:
                    attrs = await self.backend.attributes(name, settings.max_length, now)
                except Exception as e:
                    log.warning("queue of service %s: attributes unreadable: %s", name, e)
                    continue
                c = self.counters_of(name)
                c.attributes = attrs
                c.pending = 0
            for listeners in list(self.listeners.values()):
                for listener in list(listeners):
                    listener.poll()

    async def close(self, grace_s: float) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.dispatcher.stop(grace_s)
        await self.backend.close()

    def metrics_lines(self) -> list[str]:
        """Prometheus lines of every async service's queue (the gateway's /metrics)."""
        gauges = (
            ("openeas_queue_queued", "Requests accepted and not yet sent to a replica.", lambda a: a.queued),
            ("openeas_queue_in_flight", "Requests sent to a replica, no result yet.", lambda a: a.in_flight),
            (
                "openeas_queue_backlog",
                "Queued + in-flight requests: the autoscaler's backlog metric.",
                lambda a: a.queued + a.in_flight,
            ),
            ("openeas_queue_dead", "Requests in the dead-letter list.", lambda a: a.dead),
            ("openeas_queue_results", "Stored results not yet expired or read.", lambda a: a.results),
            (
                "openeas_queue_oldest_age_seconds",
                "Seconds the oldest queued request has waited (0: none queued).",
                lambda a: a.oldest_age_s or 0.0,
            ),
        )
        items = sorted(self.counters.items())
        lines: list[str] = []
        for name, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for svc, c in items:
                if c.attributes is not None:
                    lines.append(f'{name}{{service="{label_value(svc)}"}} {value(c.attributes)}')
        counters: tuple[tuple[str, str, Callable[[str, QueueCounters], int | None]], ...] = (
            ("openeas_queue_enqueued_total", "Requests accepted by this gateway.", lambda s, c: c.enqueued),
            (
                "openeas_queue_results_served_total",
                "Results answered to clients by this gateway.",
                lambda s, c: c.results_served,
            ),
            (
                "openeas_queue_dispatched_total",
                "Attempts started by this gateway's dispatcher.",
                lambda s, c: _stat(self, s, "dispatched"),
            ),
            (
                "openeas_queue_completed_total",
                "Results stored by this gateway's dispatcher.",
                lambda s, c: _stat(self, s, "completed"),
            ),
            (
                "openeas_queue_failed_attempts_total",
                "Attempts that failed (retried, or dead).",
                lambda s, c: _stat(self, s, "failed_attempts"),
            ),
            (
                "openeas_queue_dead_letters_total",
                "Requests this dispatcher moved to the dead-letter list.",
                lambda s, c: _stat(self, s, "dead"),
            ),
            (
                "openeas_queue_redelivered_total",
                "Expired leases taken back (redelivered or dead).",
                lambda s, c: _stat(self, s, "reclaimed"),
            ),
            (
                "openeas_queue_duplicate_answers_total",
                "Answers of a redelivered copy whose request already had a result (not stored).",
                lambda s, c: _stat(self, s, "duplicates"),
            ),
        )
        for name, help_text, fn in counters:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for svc, c in items:
                v = fn(svc, c)
                if v is not None:
                    lines.append(f'{name}{{service="{label_value(svc)}"}} {v}')
        lines += [
            "# HELP openeas_queue_rejected_total Requests refused by the queue, by reason.",
            "# TYPE openeas_queue_rejected_total counter",
        ]
        for svc, c in items:
            for reason, n in sorted(c.rejected.items()):
                lines.append(
                    f'openeas_queue_rejected_total{{service="{label_value(svc)}",reason="{reason}"}} {n}'
                )
        return lines


def _stat(queues: AsyncQueues, service: str, name: str) -> int | None:
    stats = queues.dispatcher.stats(service)
    return getattr(stats, name) if stats is not None else None
