"""The control plane's view of its gateways, wherever they run: the routing wait over the store's
gateway registry (schema v14), what ``GET /api/v1/gateways`` and ``openeas gateways`` show, the
/metrics gauges, and the UDP port remote gateways send their counters to.

**The routing wait.** An API call that changes routing (a group's weights, …) returns once every
*live* gateway (heartbeat at most ``kernel.fleet.LIVE_S`` old, by the database's clock) has
applied the store's routing version, at most ``ROUTING_ACK_TIMEOUT_S``; its answer names each
gateway that did not (id and URL). Two paths, one answer:

- the local datagram (gateway/routing/notify.py): the server's own gateway processes answer
  on ``DATA/run/gateway.sock`` within a millisecond or two; a registered gateway on this host
  whose pid answered that version counts as applied without a store read;
- the store: every other gateway writes the version it applied into its row. On PostgreSQL that
  write notifies ``kernel.fleet.ACK_CHANNEL`` and a thread of ours LISTENs, so the wait wakes
  on the acknowledgement itself; a poll (`PG_POLL_S`) is the safety net. On SQLite (all
  gateways on this machine) the wait polls every `SQLITE_POLL_S`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.gateway.routing.ack import ROUTING_ACK_TIMEOUT_S, AckOutcome
from openeas.gateway.routing.notify import RoutingNotifier
from openeas.gateway.routing.pg_source import LISTEN_WAKE_S, libpq_url, listen
from openeas.kernel.fleet import ACK_CHANNEL, LIVE_S, GatewayRecord, lagging
from openeas.procfs import pid_alive
from openeas.store import Store
from openeas.store.db import is_postgres
from openeas.telemetry.gateway_stats import GatewayStats
from openeas.telemetry.signed_stats import SignedReceiver, bind_udp, receive_signed

log = logging.getLogger("openeas.gateway_fleet")

SQLITE_POLL_S = 0.005  # seconds between two reads of the registry while waiting, SQLite
PG_POLL_S = 0.1  # the same on PostgreSQL, where LISTEN wakes the wait: the safety net only
MAX_NOTIFIED = 10_000  # gateway ids remembered from notifications


@dataclasses.dataclass(frozen=True)
class FleetOutcome:
    """What an API call that changed routing answers about the gateways (``routing``)."""

    version: int
    local: AckOutcome | None  # the server's own gateway (datagram path); None: none here
    live: int  # live gateways registered in the store
    lagging: tuple[GatewayRecord, ...]  # live gateways that had not applied ``version`` at return
    waited_s: float
    timeout_s: float = ROUTING_ACK_TIMEOUT_S

    @property
    def acknowledged(self) -> bool:
        return not self.lagging and (self.local is None or self.local.acknowledged)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            dict(self.local.to_dict()) if self.local is not None else {"version": self.version}
        )
        out["acknowledged"] = self.acknowledged
        out["waited_ms"] = round(self.waited_s * 1000, 1)
        out["gateways"] = {"live": self.live, "applied": self.live - len(self.lagging)}
        out["not_applied"] = [
            {"id": r.id, "url": r.url, "applied_version": r.applied_version} for r in self.lagging
        ]
        if self.lagging:
            names = ", ".join(f"{r.id} ({r.url})" for r in self.lagging)
            lag = (
                f"gateway(s) {names} did not apply routing version {self.version} within "
                f"{self.timeout_s:g}s; the change is saved and each applies it when it next reads the store"
            )
            out["warning"] = f"{out['warning']}; {lag}" if "warning" in out else lag
        return out


class FleetAcks:
    """``wait_applied(version)``: the server's `ControlPlane.await_routing`."""

    def __init__(self, store: Store, notifier: RoutingNotifier | None = None, live_s: float = LIVE_S) -> None:
        self.store = store
        self.notifier = notifier
        self.live_s = live_s
        self.host = socket.gethostname()
        self.postgres = is_postgres(store.url)
        self.poll_s = PG_POLL_S if self.postgres else SQLITE_POLL_S
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self.listening = threading.Event()  # set once LISTEN runs (PostgreSQL)
        self._listener: threading.Thread | None = None
        # gateway id → the highest version it notified as applied (PostgreSQL): the wait counts
        # an acknowledgement from its notification, without reading the registry again.
        self._notified: dict[str, int] = {}

    def records(self) -> tuple[list[GatewayRecord], float, int]:
        """Every registered gateway, the database's clock and the store's routing version."""
        return self.store.gateways()

    def wait_applied(self, version: int, timeout_s: float = ROUTING_ACK_TIMEOUT_S) -> FleetOutcome:
        """Until every live gateway has applied ``version`` (or a later one), at most ``timeout_s``."""
        start = time.monotonic()
        deadline = start + timeout_s
        self._start_listener()
        local = self.notifier.wait_applied(version, timeout_s) if self.notifier is not None else None
        live, late = self._late(version)
        while late:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._cond:
                late = [r for r in late if self._notified.get(r.id, -1) < version]
                if not late:
                    break
                notified = self._cond.wait(min(left, self.poll_s))
            if not notified:  # the safety net: read the registry again
                live, late = self._late(version)
        return FleetOutcome(version, local, len(live), tuple(late), time.monotonic() - start, timeout_s)

    def _late(self, version: int) -> tuple[list[GatewayRecord], list[GatewayRecord]]:
        """(the live gateways, those of them that have not applied ``version``), from the store."""
        recs, now, _ = self.records()
        live = [r for r in recs if r.live(now, self.live_s) and not self._gone_here(r)]
        late = [r for r in lagging(live, version, now, self.live_s) if not self._acked_here(r, version)]
        return live, late

    def _gone_here(self, rec: GatewayRecord) -> bool:
        """A gateway of this machine whose process is gone (killed; its heartbeat is not stale
        yet): not waited for. Gateways elsewhere are judged by their heartbeat alone."""
        return rec.host == self.host and pid_alive(rec.pid) is False

    def _acked_here(self, rec: GatewayRecord, version: int) -> bool:
        """A gateway process of this machine that answered ``version`` by datagram already."""
        return (
            self.notifier is not None and rec.host == self.host and rec.pid in self.notifier.pids_at(version)
        )

    # ---- PostgreSQL: LISTEN for acknowledgements ------------------------------------------------
    def _start_listener(self) -> None:
        if not self.postgres or self._listener is not None or self._closed.is_set():
            return
        with self._cond:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="openeas-gateway-acks", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        assert self.store.url is not None
        # a lost connection: the waits poll the registry meanwhile
        listen(libpq_url(self.store.url), ACK_CHANNEL, self._closed, self._acknowledged, self.listening.set,
               "gateway acknowledgements")  # fmt: skip

    def _acknowledged(self, payload: str) -> None:
        """A gateway's notification ``"<id> <version>"``: count it, wake the waits."""
        gid, _, version = payload.rpartition(" ")
        if not gid or not version.isdigit():
            return
        with self._cond:
            if len(self._notified) > MAX_NOTIFIED:
                self._notified.clear()  # ids of gateways long gone; the registry re-read covers the rest
            self._notified[gid] = max(int(version), self._notified.get(gid, -1))
            self._cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._listener is not None:
            self._listener.join(LISTEN_WAKE_S * 2)


class FleetCollector(Collector):
    """/metrics: live gateways, and each live gateway's routing-version lag."""

    def __init__(self, acks: FleetAcks) -> None:
        self.acks = acks

    def describe(self) -> Iterator[Metric]:
        """The families without their values: registering reads no store."""
        yield GaugeMetricFamily("openeas_gateways_live", "Gateways whose registry heartbeat is live")
        yield GaugeMetricFamily("openeas_gateway_routing_version_lag", "Routing versions a gateway is behind")

    def collect(self) -> Iterator[Metric]:
        recs, now, version = self.acks.records()
        live = [r for r in recs if r.live(now, self.acks.live_s)]
        yield GaugeMetricFamily(
            "openeas_gateways_live", "Gateways whose registry heartbeat is live", value=len(live)
        )
        lag = GaugeMetricFamily(
            "openeas_gateway_routing_version_lag",
            "Routing versions a live gateway is behind the store (0: it applied the current one)",
            labels=["gateway", "url"],
        )
        for r in live:
            lag.add_metric([r.id, r.url], max(0, version - r.applied_version))
        yield lag


async def receive_remote_stats(store: Store, host: str, stats: GatewayStats, stop: asyncio.Event) -> None:
    """Bind a UDP port on ``host``, advertise it and its signing key in the store, and feed
    ``stats`` with the signed counters of gateways on other machines until ``stop``."""
    sock = bind_udp(host)
    port = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    addr = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    key = await asyncio.to_thread(store.advertise_gateway_stats, addr)
    log.info("remote gateways' counters: signed UDP on %s", addr)
    await receive_signed(sock, SignedReceiver(key, stats), stop)
