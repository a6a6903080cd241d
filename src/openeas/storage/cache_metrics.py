"""The node cache on the control plane's ``/metrics``: its size, limit, entries and hit ratio.

Read at scrape time (the entries' records on disk, the server's counters since it started).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.storage.cache import NodeCache


class CacheCollector(Collector):
    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        entries = self.cache.entries()
        s = self.cache.stats
        yield GaugeMetricFamily(
            "openeas_node_cache_bytes", "Bytes the node cache holds", value=sum(e.bytes for e in entries)
        )
        yield GaugeMetricFamily(
            "openeas_node_cache_limit_bytes",
            "The node cache's bound in bytes (-1: unbounded)",
            value=-1 if self.cache.limit_bytes is None else self.cache.limit_bytes,
        )
        yield GaugeMetricFamily("openeas_node_cache_entries", "Entries in the node cache", value=len(entries))
        ratio = GaugeMetricFamily(
            "openeas_node_cache_hit_ratio",
            "Replica fetches served by the node cache / all replica fetches since the server started "
            "(absent before the first)",
        )
        if s.hit_ratio is not None:
            ratio.add_metric([], s.hit_ratio)
        yield ratio
        counters = (
            ("hits", "Replica fetches served by the node cache (single-flight waiters included)"),
            ("misses", "Replica fetches that copied from object storage"),
            ("prefetches", "Copies made when a version was created, before any replica"),
            ("evictions", "Entries evicted (LRU over the limit, or prune)"),
            ("torn", "Entries found incomplete or damaged and fetched again"),
            ("bytes_fetched", "Bytes copied into the node cache"),
        )
        for name, doc in counters:
            yield CounterMetricFamily(f"openeas_node_cache_{name}", doc, value=getattr(s, name))
