"""The control plane's side of async services: their **backlog** (queued + in flight, the
autoscaler's ``backlog`` metric) and the start from zero.

- `BacklogSource` is the narrow protocol the autoscaler reads (``backlogs([svc]) -> {svc:
  Backlog}``); `open_backlog_source` gives the one for this server's queue (SQLite file or Redis).
  The same numbers are on the gateway's /metrics as ``openeas_queue_backlog{service}``.
- `services_to_wake` (pure) picks the async services that have a backlog but no desired replica;
  `wake_from_zero` (the loop, every ``WAKE_EVERY_S``) sets their desired replicas to 1 in the store
  and records a ``ScaleFromZero`` event, so a request enqueued to a service at 0 replicas starts
  one even when no autoscaler policy does. A stopped service is never started by it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from openeas.queue.base import default_url
from openeas.queue.model import Backlog
from openeas.store.async_services import AsyncService, async_services

if TYPE_CHECKING:
    from openeas.store import Store

log = logging.getLogger("openeas.queue")

QUEUE_URL_ENV = "OPENEAS_QUEUE_URL"  # the queue backend of `openeas server --queue-url`
WAKE_EVERY_S = 0.5  # seconds between two looks at the backlogs of async services at zero


def queue_url(data_dir: Path) -> str:
    """This server's queue: OPENEAS_QUEUE_URL, else the SQLite file under the data dir."""
    return os.environ.get(QUEUE_URL_ENV) or default_url(data_dir)


def queue_args() -> list[str]:
    """The gateway's ``--queue-url`` when the server was given one (part of its fingerprint)."""
    url = os.environ.get(QUEUE_URL_ENV)
    return ["--queue-url", url] if url else []


class BacklogSource(Protocol):
    def backlogs(self, services: list[str]) -> dict[str, Backlog]:
        """Each service's backlog now (a service with an empty queue has Backlog(0, 0))."""
        ...


class SqliteBacklog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def backlogs(self, services: list[str]) -> dict[str, Backlog]:
        from openeas.queue.sqlite import backlogs

        return backlogs(self.path, services)


def open_backlog_source(data_dir: Path, url: str | None = None) -> BacklogSource:
    url = url or queue_url(data_dir)
    if url.startswith("redis"):
        from openeas.queue.redis_streams import RedisBacklog

        return RedisBacklog(url)
    from openeas.queue.sqlite import url_path

    return SqliteBacklog(url_path(url, data_dir))


def backlog(data_dir: Path, service: str) -> Backlog:
    """One service's backlog (queued + in flight), read now: the autoscaler's ``backlog`` metric."""
    return open_backlog_source(data_dir).backlogs([service])[service]


def services_to_wake(services: list[AsyncService], backlogs: Mapping[str, Backlog]) -> list[str]:
    """Async services to scale from 0 to 1: running, 0 desired replicas, something queued or in
    flight. No backlog known (None) is not a backlog."""
    out = []
    for s in services:
        b = backlogs.get(s.name)
        if s.running and s.desired_replicas == 0 and b is not None and b.total > 0:
            out.append(s.name)
    return out


async def wake_from_zero(
    store: Store,
    source: BacklogSource,
    stop: asyncio.Event,
    *,
    on_wake: Callable[[str], object] | None = None,
    every_s: float = WAKE_EVERY_S,
) -> None:
    """Until ``stop``: scale each async service at zero with a backlog to one replica."""
    while not stop.is_set():
        try:
            services = await asyncio.to_thread(async_services, store)
            idle = [s.name for s in services if s.desired_replicas == 0 and s.running]
            if idle:
                backlogs = await asyncio.to_thread(source.backlogs, idle)
                for name in services_to_wake(services, backlogs):
                    b = backlogs[name]
                    await asyncio.to_thread(
                        store.update_service,
                        name,
                        desired_replicas=1,
                        event=(
                            "ScaleFromZero",
                            f"{b.queued} queued and {b.in_flight} in-flight async requests; "
                            "desired replicas 0 → 1",
                        ),
                    )
                    log.info("async service %s has a backlog at 0 replicas: scaled to 1", name)
                    if on_wake is not None:
                        on_wake(name)
        except Exception:
            log.exception("queue: the scale-from-zero look failed")
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
