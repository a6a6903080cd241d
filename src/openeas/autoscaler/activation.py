"""Activation of async services at zero replicas: a request queued for a service with no desired
replica starts one, also when no autoscaler policy would (EAS's scale from zero for queues).

It is one of the autoscaler's activation signals, next to a request the gateway holds: the
autoscaler alone writes desired replicas. `services_to_wake` is the pure decision; `QueueActivation`
reads the queue backend's backlogs (off the event loop, at most every ``every_s``) for the async
services at zero. A stopped service is never started by it; no data is not a backlog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from openeas.kernel.states import ServiceState
from openeas.queue.model import Backlog
from openeas.queue.scale import BacklogSource
from openeas.store import ServiceRow, Store

log = logging.getLogger("openeas.autoscaler")

ACTIVATION_EVERY_S = 0.5  # seconds between two reads of the backlogs of async services at zero


@dataclass(frozen=True)
class AsyncService:
    """What the wake-up decision needs of an async service."""

    name: str
    running: bool  # desired state Running (not Stopped, not Deleting)
    desired_replicas: int


def services_to_wake(services: Sequence[AsyncService], backlogs: Mapping[str, Backlog]) -> list[str]:
    """Async services to scale from 0 to 1: running, 0 desired replicas, something queued or in
    flight. No backlog known (None) is not a backlog."""
    out = []
    for s in services:
        b = backlogs.get(s.name)
        if s.running and s.desired_replicas == 0 and b is not None and b.total > 0:
            out.append(s.name)
    return out


class QueueActivation:
    """Which async services at zero have a backlog now (what the autoscaler wakes)."""

    def __init__(self, store: Store, source: BacklogSource, every_s: float = ACTIVATION_EVERY_S) -> None:
        self.store = store
        self.source = source
        self.every_s = every_s
        self._async: dict[tuple[str, int], bool] = {}  # (service, version) → is async
        self._last: float | None = None

    def _is_async(self, svc: ServiceRow) -> bool:
        key = (svc.name, svc.current_version)
        if key not in self._async:
            try:
                self._async[key] = self.store.version_spec(svc.name, svc.current_version).is_async
            except Exception as exc:  # one unreadable spec must not stop the others
                log.warning("activation: %s version %s: unreadable spec (%s)", *key, exc)
                return False
        return self._async[key]

    async def due(self, services: Sequence[ServiceRow], now: float) -> dict[str, Backlog]:
        """The async services to wake from zero, with their backlogs (empty between reads)."""
        if self._last is not None and now - self._last < self.every_s * 0.999:
            return {}
        self._last = now
        candidates = [
            AsyncService(s.name, s.state == ServiceState.RUNNING, s.desired_replicas)
            for s in services
            if s.state == ServiceState.RUNNING and s.desired_replicas == 0 and self._is_async(s)
        ]
        if not candidates:
            return {}
        try:
            backlogs = await asyncio.to_thread(self.source.backlogs, [c.name for c in candidates])
        except Exception:  # a queue that cannot be read wakes nothing
            log.warning("activation: cannot read the queue backlogs", exc_info=True)
            return {}
        return {name: backlogs[name] for name in services_to_wake(candidates, backlogs)}
