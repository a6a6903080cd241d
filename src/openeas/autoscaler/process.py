"""Collectors that read the replicas' processes: CPU and memory with psutil, GPU memory with NVML
where it is present.

A replica is its leader process and everything it started (its process tree): a server that
forks workers is measured whole. ``cpu`` is the % of the replica's cores (``metadata.cpu``, else
one core) used over the window; ``memory`` the resident MiB; ``gpu_memory`` the MiB NVML reports
for the tree's processes. Without NVML (no driver, no ``nvidia-ml-py``), ``gpu_memory`` has no
data: the autoscaler does not scale on it rather than read it as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psutil

from openeas.autoscaler.metrics import ServiceView, aggregate
from openeas.autoscaler.windows import Counter, Gauge
from openeas.spec.autoscaling import MetricTarget

log = logging.getLogger("openeas.autoscaler")
MIB = 1024 * 1024
STALE_S = 10.0


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _tree_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, resident bytes) of a process tree; None when it is gone."""
    cpu, rss, seen = 0.0, 0.0, False
    for p in process_tree(pid):
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
            seen = True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return (cpu, rss) if seen else None


class ProcessSampler:
    kinds: tuple[str, ...] = ("cpu", "memory")

    def __init__(self, horizon_s: float = 900.0) -> None:
        self.horizon_s = horizon_s
        self.cpu: dict[str, Counter] = {}  # replica id → CPU seconds
        self.rss: dict[str, Gauge] = {}  # replica id → MiB

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        live = set()
        for svc in services:
            if not any(m.kind in self.kinds for m in svc.policy.metrics):
                continue
            for r in svc.replicas:
                if r.pid is None:
                    continue
                usage = _tree_usage(r.pid)  # /proc reads: quick enough for the loop
                if usage is None:
                    continue
                live.add(r.id)
                self.cpu.setdefault(r.id, Counter(self.horizon_s)).add(now, usage[0])
                self.rss.setdefault(r.id, Gauge(self.horizon_s)).add(now, usage[1] / MIB)
        for table in (self.cpu, self.rss):
            for rid in [k for k in table if k not in live]:
                del table[rid]

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        if not service.replicas:
            return 0.0
        per: dict[str, float] = {}
        for r in service.replicas:
            if metric.kind == "cpu":
                c = self.cpu.get(r.id)
                rate = c.rate(window_s, now) if c is not None else None
                if rate is not None:
                    per[r.id] = rate * 100.0 / max(service.cores, 1e-9)  # cores used → % of its cores
            else:
                g = self.rss.get(r.id)
                last = g.last() if g is not None else None
                if g is not None and last is not None and now - last[0] <= STALE_S:
                    mean = g.mean(window_s, now)
                    if mean is not None:
                        per[r.id] = mean
        return aggregate(per, len(service.replicas), metric.aggregate)


def load_nvml() -> Any | None:
    """The NVML module, initialised; None without the library or a driver."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]

        pynvml.nvmlInit()
        return pynvml
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors...
        log.debug("NVML not available: %s", exc)
        return None


class NvmlSampler:
    kinds: tuple[str, ...] = ("gpu_memory",)

    def __init__(self, nvml: Any | None = None, horizon_s: float = 900.0) -> None:
        self.nvml = nvml if nvml is not None else load_nvml()
        self.horizon_s = horizon_s
        self.used: dict[str, Gauge] = {}  # replica id → MiB

    def _by_pid(self) -> dict[int, float]:
        nv = self.nvml
        assert nv is not None
        out: dict[int, float] = {}
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                if p.usedGpuMemory is not None:
                    out[p.pid] = out.get(p.pid, 0.0) + p.usedGpuMemory / MIB
        return out

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        if self.nvml is None:
            return
        wanted = [s for s in services if any(m.kind == "gpu_memory" for m in s.policy.metrics)]
        if not wanted:
            return
        try:
            by_pid = self._by_pid()
        except Exception as exc:
            log.warning("NVML read failed: %s", exc)
            return
        for svc in wanted:
            for r in svc.replicas:
                if r.pid is not None:
                    mib = sum(by_pid.get(p.pid, 0.0) for p in process_tree(r.pid))
                    self.used.setdefault(r.id, Gauge(self.horizon_s)).add(now, mib)

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        if self.nvml is None:
            return None
        if not service.replicas:
            return 0.0
        per = {
            r.id: m
            for r in service.replicas
            if (g := self.used.get(r.id)) is not None and (m := g.mean(window_s, now)) is not None
        }
        return aggregate(per, len(service.replicas), metric.aggregate)
