"""The request meter: the gateways' arrival counters, written to the store's meter (issue 24 §3).

Every ``interval_s`` it asks :class:`~openeas.telemetry.gateway_stats.GatewayStats` how many
requests each service received since the previous look (the gateways send their cumulative
counters to the control plane every 0.2 s) and adds them to the store's ``request_usage`` row of
the service and the current UTC hour; one last look when the server stops. ``openeas cost
report`` prices them with the catalog's ``per_request_fee``. A look that straddles an hour's end
counts its requests in the later hour (at most ``interval_s`` of them). Requests received while
no server ran are not counted: the gateway's counters are read, not its history.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Mapping

from openeas.kernel.clock import Clock
from openeas.store import Store
from openeas.telemetry.gateway_stats import GatewayStats

log = logging.getLogger("openeas.controller.request_meter")

INTERVAL_S = 10.0  # seconds between two writes (well inside GatewayStats' 900 s horizon)
ENV_INTERVAL = "OPENEAS_REQUEST_METER_S"  # overrides INTERVAL_S (tests use a short one)


def meter_interval(environ: Mapping[str, str] = os.environ) -> float:
    """The interval from ``OPENEAS_REQUEST_METER_S``, else :data:`INTERVAL_S`; a bad value names it."""
    raw = environ.get(ENV_INTERVAL)
    if not raw:
        return INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= 600:
        raise ValueError(f"{ENV_INTERVAL}: {raw!r}; must be seconds in (0, 600]")
    return value


class RequestMeter:
    def __init__(
        self, store: Store, stats: GatewayStats, clock: Clock, *, interval_s: float = INTERVAL_S
    ) -> None:
        self.store = store
        self.stats = stats
        self.clock = clock  # now: the stats' clock (monotonic); wall: the hour of a row
        self.interval_s = interval_s
        self._since: float | None = None  # the previous look, on the stats' clock

    def collect(self) -> tuple[dict[str, int], float]:
        """Requests by service since the previous look, and the time of this one (stats' clock).
        Run on the receiver's event loop: GatewayStats is not thread-safe."""
        now = self.clock.now()
        since = self._since if self._since is not None else now - self.interval_s
        counts = {s: self.stats.requests_between(s, since, now) for s in self.stats.services()}
        return {s: n for s, n in counts.items() if n > 0}, now

    def tick(self) -> dict[str, int]:
        """One look, written at once (tests)."""
        counts, now = self.collect()
        self.store.add_requests(counts, self.clock.wall())
        self._since = now
        return counts

    async def run(self, stop: asyncio.Event) -> None:
        self._since = self.clock.now()  # counted from the server's start
        while True:
            stopped = await self.clock.sleep(self.interval_s, stop)
            counts, now = self.collect()
            try:
                if counts:
                    await asyncio.to_thread(self.store.add_requests, counts, self.clock.wall())
                self._since = now  # only once written: a failed write is added by the next look
            except Exception:
                log.exception("request meter")
            if stopped:
                return
