"""Pre-fetch onto the node when a version is created, so its first replica hits the node cache.

The reconciler calls :meth:`Prefetcher.ensure` for each service's current version on every pass;
the first call for a (service, version) whose spec mounts object storage copies those mounts into
the cache the version's replicas will use (their service uid's, for process replicas run as
users of their own), in a thread. A replica that starts meanwhile waits for the same copy (the
cache is single-flight) instead of fetching again. The outcome is an event of the service
("Prefetched" with the bytes and seconds, or "PrefetchFailed" with the reason; the replica's own
start reports the same failure again).
"""

from __future__ import annotations

import asyncio
import logging
import time

from openeas.controller.startup import _resolve_storage
from openeas.controller.supervisor_base import SupervisorConfig
from openeas.errors import MountError
from openeas.runtime.select import Runtimes
from openeas.spec.models import ServiceSpec
from openeas.storage import Materialized, NodeCache
from openeas.store import Store

log = logging.getLogger("openeas.prefetch")


class Prefetcher:
    def __init__(self, store: Store, runtimes: Runtimes, cfg: SupervisorConfig, cache: NodeCache) -> None:
        self.store = store
        self.runtimes = runtimes
        self.cfg = cfg
        self.cache = cache
        self.seen: set[tuple[str, int]] = set()  # (service, version) pre-fetched or being pre-fetched
        self.tasks: set[asyncio.Task[None]] = set()

    def ensure(self, service: str, version: int, spec: ServiceSpec) -> None:
        """Start the pre-fetch of this version's object-storage mounts once (see the module docstring)."""
        if (service, version) in self.seen:
            return
        self.seen.add((service, version))
        if not any(m.oss is not None for m in spec.storage):
            return
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.fetch, service, version, spec))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _cache_for(self, service: str, spec: ServiceSpec) -> NodeCache:
        users = self.cfg.replica_users
        user = users.for_service(service) if users and self.runtimes.choose(spec).name == "process" else None
        return self.cache if user is None else self.cache.for_owner(user)

    def materialize(self, service: str, spec: ServiceSpec) -> list[tuple[int, Materialized]]:
        """Copy the spec's object-storage mounts (those not shadowed by another) into the node
        cache its replicas use; each mount's index in ``storage`` and its cache entry. MountError
        names the field of a mount that cannot be read or is outside the allowed folders."""
        cache = self._cache_for(service, spec)
        resolved = _resolve_storage(spec, self.cfg.oss_root)
        shadowed = spec.shadowed_mounts()
        out = []
        for i, (m, orig) in enumerate(zip(resolved.storage, spec.storage, strict=True)):
            if m.oss is None or orig.oss is None or i in shadowed:
                continue
            if self.cfg.host_paths is not None:  # the rule every start checks, checked first
                self.cfg.host_paths.local(orig.oss.path, f"storage[{i}].oss.path")
            out.append((i, cache.materialize(m.oss.path, where=f"storage[{i}].oss.path", prefetch=True)))
        return out

    def fetch(self, service: str, version: int, spec: ServiceSpec) -> None:
        t0 = time.monotonic()
        copied, hits = 0, 0
        try:
            for _, got in self.materialize(service, spec):
                copied += got.bytes_copied
                hits += got.hit
        except MountError as exc:
            self.store.record_event(
                service, "PrefetchFailed", f"version {version}: {exc.message}", type="Warning"
            )
            return
        except Exception as exc:  # a pre-fetch is an optimisation: the replica's start reports for real
            log.exception("pre-fetch of %s version %d failed", service, version)
            self.store.record_event(service, "PrefetchFailed", f"version {version}: {exc}", type="Warning")
            return
        self.store.record_event(
            service,
            "Prefetched",
            f"version {version}: {copied} bytes copied into the node cache in {time.monotonic() - t0:.2f} s"
            + (f" ({hits} mounts already cached)" if hits else ""),
        )
