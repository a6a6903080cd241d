"""The routing table: what the gateway needs to know, and nothing else.

The control plane writes desired state and replica phases into the store; a `RoutingSource`
turns that into an immutable `RoutingTable` the gateway swaps in atomically. The gateway never
reads the store's internals, and tests or benchmarks can feed it a table from a JSON file.
"""

from __future__ import annotations

import json
import os
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
