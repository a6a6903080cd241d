"""Each service's current spec, read and parsed once.

A version never changes, and a service deleted and made again has another ``created_at``, so
``(name, version, created_at)`` names one spec for good. The reconciler reads every service's spec
on each pass (50 services made 200 reads and parses a second on the event loop the API answers
from), and the service list reports each service's inference mode: one cache serves both. The
reconciler runs on the event loop and the API's handlers on threads: a lock keeps it whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from openeas.spec import ServiceSpec
from openeas.store.db import Store
from openeas.store.schema import ServiceRow

SpecKey = tuple[str, int, float]  # (service, version, created_at in epoch seconds)


def spec_key(svc: ServiceRow) -> SpecKey:
    return (svc.name, svc.current_version, svc.created_at)


class SpecCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._specs: dict[SpecKey, ServiceSpec] = {}
        self._lock = threading.Lock()

    def current(self, svc: ServiceRow) -> ServiceSpec:
        """The spec of ``svc``'s current version (NotFound when the service is gone meanwhile)."""
        key = spec_key(svc)
        with self._lock:
            spec = self._specs.get(key)
        if spec is None:  # read outside the lock: two threads may both parse it once, harmlessly
            spec = self.store.version_spec(svc.name, svc.current_version)
            with self._lock:
                self._specs[key] = spec
        return spec

    def cached(self, key: SpecKey) -> ServiceSpec | None:
        """The spec of ``key`` if it was read already; None otherwise (nothing is read)."""
        with self._lock:
            return self._specs.get(key)

    def keep_only(self, services: Iterable[ServiceRow]) -> None:
        """Forget the specs of versions no longer current (replaced, or their service deleted)."""
        current = {spec_key(s) for s in services}
        with self._lock:
            for gone in set(self._specs) - current:
                del self._specs[gone]

    def __len__(self) -> int:
        with self._lock:
            return len(self._specs)
