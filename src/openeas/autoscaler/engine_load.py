"""Engine load for the gateway's ``least-waiting`` and ``least-kv`` balancers: every
``INTERVAL_S`` the control plane reads the Ready replicas' own ``/metrics`` — only for services
whose balancer needs them — and pushes what it read to the gateway in one datagram
(:mod:`openeas.gateway.routing.replica_load`). The gateway never fetches anything per request.

The metrics read, by engine (the first one a replica exposes wins; several label sets, e.g. one
per model, are summed):

- requests waiting: ``vllm:num_requests_waiting``, ``llamacpp:requests_deferred``,
  ``sglang:num_queue_reqs``;
- KV cache use in [0, 1]: ``vllm:kv_cache_usage_perc`` (vLLM's name; its value is a fraction),
  ``vllm:gpu_cache_usage_perc`` (older vLLM), ``llamacpp:kv_cache_usage_ratio``,
  ``sglang:token_usage``.

A replica whose scrape fails, or that exposes none of them, is unknown (-1) and the balancer
falls back to the gateway's own outstanding count for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from openeas.autoscaler.scrape import fetch_text, parse_samples
from openeas.gateway.routing.replica_load import LoadSender, socket_path
from openeas.kernel.states import ReplicaPhase
from openeas.store import Store

log = logging.getLogger("openeas.autoscaler")

INTERVAL_S = 0.5  # seconds between two scrape rounds (and two pushes)
SCRAPE_TIMEOUT_S = 0.4  # a replica slower than this to answer /metrics is unknown this round
# The balancers that read engine load (openeas.gateway.routing.balancers).
ENGINE_BALANCERS = frozenset({"least-waiting", "least-kv"})
WAITING_METRICS = ("vllm:num_requests_waiting", "llamacpp:requests_deferred", "sglang:num_queue_reqs")
KV_METRICS = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "llamacpp:kv_cache_usage_ratio",
    "sglang:token_usage",
)
_WANTED = frozenset({*WAITING_METRICS, *KV_METRICS})


@dataclass(frozen=True)
class Target:
    replica_id: str
    url: str  # the replica's /metrics


def engine_load(text: str) -> tuple[float, float]:
    """(requests waiting, KV cache use) from a replica's Prometheus text; -1 where it says nothing."""
    samples = parse_samples(text, set(_WANTED))

    def first(names: Sequence[str]) -> float:
        for name in names:
            if samples.get(name):  # present with at least one readable value
                return sum(v for _, v in samples[name])
        return -1.0

    return first(WAITING_METRICS), first(KV_METRICS)


class EngineLoadScraper:
    """The loop: find the replicas to read (from the store), read them, push."""

    def __init__(
        self, store: Store, data_dir: Path, *, interval_s: float = INTERVAL_S, gateway_workers: int = 1
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        # One socket per gateway worker process (`openeas server --gateway-workers N`).
        self.sender = LoadSender([socket_path(data_dir, k) for k in range(gateway_workers)])
        self._balancers: dict[tuple[str, int], str] = {}  # (service, version) → balancer
        self.last: dict[str, tuple[float, float]] = {}  # what the last round pushed

    def targets(self) -> list[Target]:
        """Ready replicas of the services whose current version's balancer reads engine load."""
        wanted = {
            s.name
            for s in self.store.list_services()
            if self._balancer(s.name, s.current_version) in ENGINE_BALANCERS
        }
        if not wanted:
            return []
        return [
            Target(r.id, f"http://{r.host}:{r.port}/metrics")
            for r in self.store.replicas()
            if r.service in wanted and r.phase == ReplicaPhase.READY and not r.stopping and r.port
        ]

    def _balancer(self, name: str, version: int) -> str:
        key = (name, version)
        found = self._balancers.get(key)
        if found is None:
            try:
                found = self.store.version_spec(name, version).metadata.balancer or ""
            except Exception as exc:  # one unreadable spec must not stop the others
                log.warning("engine load: %s version %s: %s", name, version, exc)
                found = ""
            self._balancers[key] = found
        return found

    async def round(self, session: aiohttp.ClientSession) -> Mapping[str, tuple[float, float]]:
        targets = await asyncio.to_thread(self.targets)

        async def read(t: Target) -> tuple[str, tuple[float, float]]:
            text = await fetch_text(session, t.url, SCRAPE_TIMEOUT_S)
            return t.replica_id, engine_load(text) if text is not None else (-1.0, -1.0)

        loads = dict(await asyncio.gather(*(read(t) for t in targets)))
        if loads or self.last:  # nothing to say twice: an empty picture once
            self.sender.send(loads)
        self.last = loads
        return loads

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            try:
                while not stop.is_set():
                    try:
                        await self.round(session)
                    except Exception:  # a broken round must not end the loop
                        log.exception("engine load scrape failed")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.interval_s)
            finally:
                self.sender.close()
