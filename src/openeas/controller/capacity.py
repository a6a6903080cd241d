"""Admission by the node's capacity: which replicas may start, and why the others wait.

Every replica requests the cores and memory its spec's ``metadata.cpu`` / ``metadata.memory``
name (``DEFAULT_CPU`` / ``DEFAULT_MEMORY_MB`` where the spec is silent); the node offers its
cores and memory (``psutil``, or the operator's ``openeas server --node-cpu N --node-memory MB``).
A replica that already holds its share (admitted earlier, or found running after a control-plane
restart) keeps it until its row is gone; the others are admitted in the order given (oldest
first) while they fit, and a smaller one behind a larger one that does not fit may still start.
What does not fit stays Pending with the reason (``not enough memory on this node: needs 8000
MB, free 3000 MB``) and starts as soon as a scale-in or a delete frees enough.

:func:`admit` is the pure decision (claims, capacity) -> admitted and pending-with-reasons; the
reconciler applies it each pass and its supervisors wait on it before a first start.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

from openeas.kernel.clock import Clock
from openeas.spec import ServiceSpec

DEFAULT_CPU = 0.05
"""Cores a replica requests when its spec names no ``metadata.cpu``: small, so tens of small test
or proxy replicas fit on a 2-core machine, and still a bound (at most 40 such replicas per 2 cores)."""
DEFAULT_MEMORY_MB = 256
"""MB a replica requests when its spec names no ``metadata.memory`` (at most 96 such replicas on
24 GiB): about what a small Python model server uses."""


@dataclass(frozen=True)
class Resources:
    cpu: float  # cores
    memory_mb: float  # MB (2^20 bytes)

    def fits_in(self, free: Resources) -> bool:
        return self.cpu <= free.cpu + 1e-9 and self.memory_mb <= free.memory_mb + 1e-9

    def minus(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory_mb - other.memory_mb)


@dataclass(frozen=True)
class Claim:
    """One replica as admission sees it."""

    id: str
    request: Resources
    holds: bool  # it already holds its share (admitted before, or has a process)


@dataclass(frozen=True)
class Admission:
    admitted: frozenset[str]  # may start (or keep running): every holder and the new ones that fit
    pending: dict[str, str]  # replica id → why it waits
    free: Resources  # what is left after all admitted (negative when holders overcommit)


def request_of(spec: ServiceSpec) -> Resources:
    """What one replica of ``spec`` requests: its metadata.cpu / memory, else the defaults."""
    meta = spec.metadata
    cpu = float(meta.cpu) if meta.cpu is not None else DEFAULT_CPU
    memory = float(meta.memory) if meta.memory is not None else float(DEFAULT_MEMORY_MB)
    return Resources(cpu=cpu, memory_mb=memory)


def node_capacity(cpu: float | None = None, memory_mb: float | None = None) -> Resources:
    """This node's cores and memory (all of them: the control plane's own share is small), each
    replaced by the operator's value where one is given."""
    cores = float(cpu) if cpu is not None else float(len(os.sched_getaffinity(0)) or os.cpu_count() or 1)
    mem = float(memory_mb) if memory_mb is not None else psutil.virtual_memory().total / 2**20
    return Resources(cpu=cores, memory_mb=mem)


def admit(claims: Sequence[Claim], capacity: Resources) -> Admission:
    """Admit ``claims`` (in priority order) on a node of ``capacity``; see the module docstring."""
    free = capacity
    admitted: set[str] = set()
    for c in claims:
        if c.holds:
            admitted.add(c.id)
            free = free.minus(c.request)
    pending: dict[str, str] = {}
    for c in claims:
        if c.holds:
            continue
        if c.request.fits_in(free):
            admitted.add(c.id)
            free = free.minus(c.request)
        else:
            pending[c.id] = why_pending(c.request, free, capacity)
    return Admission(admitted=frozenset(admitted), pending=pending, free=free)


def why_pending(request: Resources, free: Resources, capacity: Resources) -> str:
    """The reason a replica waits: each resource it lacks, what it needs and what is free."""
    parts = []
    if request.cpu > free.cpu + 1e-9:
        parts.append(
            f"not enough cpu on this node: needs {_n(request.cpu)} cores, free {_n(max(0.0, free.cpu))} "
            f"(of {_n(capacity.cpu)})"
        )
    if request.memory_mb > free.memory_mb + 1e-9:
        parts.append(
            f"not enough memory on this node: needs {_n(request.memory_mb)} MB, free "
            f"{_n(max(0.0, free.memory_mb))} MB (of {_n(capacity.memory_mb)} MB)"
        )
    return "; ".join(parts)


def _n(x: float) -> str:
    """A quantity as people write it: 2, 0.5, 8000 (not 2.0 or 8000.000001)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


ADMISSION_RECHECK_S = 1.0
"""How often a waiting replica looks at its gate without being woken (a safety net), seconds."""


class AdmissionGate:
    """Where one replica's supervisor waits for admission before a first start. Open by default
    (a supervisor alone, in tests, starts at once); the reconciler closes it, with the reason, in
    the same pass that makes the supervisor, and opens it when the replica fits."""

    def __init__(self) -> None:
        self.reason: str | None = None  # why it waits; None: admitted
        self.changed = asyncio.Event()

    def set(self, reason: str | None) -> None:
        if reason != self.reason:
            self.reason = reason
            self.changed.set()

    def wake(self) -> None:
        self.changed.set()

    async def wait(self, clock: Clock, stop: asyncio.Event, show: Callable[[str], object]) -> bool:
        """Return True once admitted, False as soon as ``stop`` is set; ``show`` each new reason."""
        shown: str | None = None
        while not stop.is_set():
            reason = self.reason
            if reason is None:
                return True
            if reason != shown:
                show(reason)
                shown = reason
            self.changed.clear()
            await clock.sleep(ADMISSION_RECHECK_S, until=self.changed)
        return False
