"""The control plane's side of async services: their **backlog** (queued + in flight, the
autoscaler's ``backlog`` metric and its activation from zero).

- `BacklogSource` is the narrow protocol the autoscaler reads (``backlogs([svc]) -> {svc:
  Backlog}``); `open_backlog_source` gives the one for this server's queue (SQLite file or Redis).
  The same numbers are on the gateway's /metrics as ``openeas_queue_backlog{service}``.
- The start from zero is the autoscaler's (`openeas.autoscaler.activation`): a backlog at 0
  desired replicas sets them to 1 with a ``ScaleFromZero`` event, with or without a policy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from openeas.queue.base import default_url
from openeas.queue.model import Backlog

QUEUE_URL_ENV = "OPENEAS_QUEUE_URL"  # the queue backend of `openeas server --queue-url`


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
