"""The routing table: what the gateway needs to know, and nothing else.

The control plane writes desired state and replica phases into the store; a `RoutingSource`
turns that into an immutable `RoutingTable` the gateway swaps in atomically. The gateway never
reads the store's internals, and tests or benchmarks can feed it a table from a JSON file.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from openeas.kernel.routing import RoutingTable


class RoutingSource(Protocol):
    def poll(self) -> RoutingTable | None:
        """Return a new table when it changed since the last call, else None. Must be cheap."""
        ...


class FileRoutingSource:
    """A routing table kept in a JSON file (benchmarks, tests); reloaded when its mtime changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mtime: float | None = None

    def poll(self) -> RoutingTable | None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        return RoutingTable.from_dict(json.loads(self.path.read_text()))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a table is built: a whole build makes tens of thousands
    of objects that all live on, and the collector, set off by the allocations, would walk the
    growing heap again and again for nothing (bench/cluster.py at 10,000 replicas: apply 330-560
    ms with it, 43-54 ms without, same run). Process-wide, so other threads' garbage waits the
    same few milliseconds; nested or concurrent pauses leave it enabled only by the one that
    found it enabled."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
