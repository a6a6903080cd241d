"""The Services page's live data: one snapshot of every service and group, rebuilt by one loop
every ``LIVE_INTERVAL_S`` from the control plane's own data (the store, the gateways' counters
pushed in the stats datagram: in flight, and answers by status and latency for the rates), handed
to every open page over Server-Sent Events. However many pages are open, the store is read once
per tick (no polling storm). A short history per service feeds the charts on first open."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from openeas.api.control import ControlPlane
from openeas.console.rates import Reading, Window, window
from openeas.store.groups import GroupStore
from openeas.store.schema import ReplicaRow

LIVE_INTERVAL_S = 0.5
"""Seconds between two snapshots (a change shows on the page within about this)."""

HISTORY_POINTS = 1200
"""Points kept per service: 10 minutes at one point per LIVE_INTERVAL_S."""

@dataclass(frozen=True)
class Point:
    t: float  # clock seconds
    qps: float
    p99_ms: float | None
    in_flight: int
    ready: int


CostHook = Callable[[str, int], str | None]
"""A service version's monthly cost as text (None: unknown); the Services page's cost column."""


class Live:
    """The latest snapshot, its version, and each service's history."""

    def __init__(
        self,
        cp: ControlPlane,
        clock: Callable[[], float] = time.time,
        cost: CostHook | None = None,
    ) -> None:
        self.cp = cp
        self.clock = clock
        self.cost = cost
        self._prev: Reading | None = None
        self.windows: dict[str, Window] = {}
        self.history: dict[str, deque[Point]] = {}
        self.snapshot: dict[str, Any] = {"services": [], "groups": [], "time": 0.0}
        self.version = 0
        self._changed = asyncio.Event()
        # Set when `run` ends (the server stops): every live stream ends its response, so a
        # console tab left open never holds the API server's graceful shutdown.
        self.closed = asyncio.Event()

    def rows(self, now: float) -> dict[str, Any]:
        """Every service and group, as the Services page shows them. Three reads of the store
        whatever the number of services (each read holds the store's write lock a moment, which
        the reconciler and the API wait for: one read per service made every page answer slower)."""
        services = []
        by_service: dict[str, list[ReplicaRow]] = {}
        for rep in self.cp.store.replicas():
            by_service.setdefault(rep.service, []).append(rep)
        for svc in self.cp.store.list_services():
            s = self.cp.summary(svc, by_service.get(svc.name, []))
            w = self.windows.get(svc.name)
            cur = self.cp.gateway_stats.current(svc.name, now) if self.cp.gateway_stats else None
            auto = self.cp.autoscaler.status(svc.name) if self.cp.autoscaler is not None else None
            decision = (auto or {}).get("decision") or {}
            services.append(
                {
                    "name": s["name"],
                    "status": s["status"],
                    "ready": s["ready_replicas"],
                    "desired": s["desired_replicas"],
                    "qps": round(w.qps, 2) if w else 0.0,
                    "p50_ms": w.p50_ms if w else None,
                    "p99_ms": w.p99_ms if w else None,
                    "success": w.success if w else None,
                    "in_flight": cur.in_flight if cur else 0,
                    "decision": decision.get("reason") if isinstance(decision, dict) else None,
                    "cost": self.cost(svc.name, svc.current_version) if self.cost else None,
                    "idle": s.get("idle"),
                }
            )
        groups = [
            {
                "name": g.name,
                "members": [{"service": m.service, "weight": m.weight} for m in g.members],
            }
            for g in GroupStore(self.cp.store).list_groups()
        ]
        return {"services": services, "groups": groups, "time": now}

    async def tick(self) -> None:
        """One snapshot: rates, rows, history; wakes every waiting page when it changed."""
        now = self.clock()
        stats = self.cp.gateway_stats
        if stats is not None:
            cur = Reading(stats.clock(), stats.answers())
            if self._prev is not None:
                self.windows = {name: window(self._prev, cur, name) for name in cur.answers}
            self._prev = cur
        snap = await asyncio.to_thread(self.rows, now)
        for row in snap["services"]:
            hist = self.history.setdefault(row["name"], deque(maxlen=HISTORY_POINTS))
            hist.append(Point(now, row["qps"], row["p99_ms"], row["in_flight"], row["ready"]))
        for gone in set(self.history) - {r["name"] for r in snap["services"]}:
            del self.history[gone]
        if _content(snap) != _content(self.snapshot):
            self.snapshot = snap
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def run(self, stop: asyncio.Event, interval_s: float = LIVE_INTERVAL_S) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:  # a bad tick must not end the live view
                    pass
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
        finally:
            self.close()

    def close(self) -> None:
        """End the live view: every waiting stream wakes and ends."""
        self.closed.set()
        self._changed.set()

    async def changed_since(self, version: int, timeout_s: float) -> bool:
        """Wait until the snapshot's version passes ``version`` (True), ``timeout_s`` ends, or the
        live view is closed (True: the caller sees `closed`)."""
        if self.version > version or self.closed.is_set():
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def history_of(self, name: str) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.history.get(name, ())]


def _content(snap: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in snap.items() if k != "time"}, sort_keys=True)

