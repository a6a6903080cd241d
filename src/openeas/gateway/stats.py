"""Owns the gateway's side of the control plane's per-service counters: `StatsSender` samples
every service's arrivals, in-flight and held requests, and every replica's in-flight requests and
whether it is routed, every `SEND_INTERVAL_S` and sends them in a
datagram to ``DATA/run/control.sock`` (wire format and receiver:
:mod:`openeas.telemetry.gateway_stats`), and sends one at once when a request is held, so the
control plane can scale a service from zero without waiting for the next sample.

Sampling reads counters the proxy keeps anyway (`ServiceMetrics`): arrivals are the answered
requests plus those in flight, so the hot path pays nothing for it. Sending never blocks and
ignores every error (no control plane listening, a full queue): the gateway serves on, and the
next sample carries the cumulative counters, so a lost datagram loses no arrival.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

from openeas.gateway.metrics import GatewayMetrics
from openeas.telemetry.gateway_stats import SEND_INTERVAL_S, ReplicaSample, ServiceSample, encode
from openeas.unixdgram import DGRAM, UnixAddress


def samples(metrics: GatewayMetrics) -> dict[str, ServiceSample]:
    """Every service's counters now (a pure read of the gateway's metrics)."""
    out = {}
    for name, m in metrics.services.items():
        held = m.hold.held if m.hold is not None else 0
        out[name] = ServiceSample(
            arrivals=m.latency_count + m.in_flight,  # answered + not yet answered
            in_flight=m.in_flight - held,  # ServiceMetrics.in_flight counts held requests too
            held=held,
        )
    return out


def replica_samples(metrics: GatewayMetrics) -> dict[str, ReplicaSample]:
    """Every replica the gateway knows: its requests in flight, whether it is routed (the same
    gauges as /metrics' ``openeas_gateway_replica_*``); empty when the proxy did not wire them."""
    if metrics.replicas is None:
        return {}
    return {rid: ReplicaSample(in_flight, routed) for rid, routed, in_flight in metrics.replicas()}


class StatsSender:
    """Sends this gateway's per-service counters to the control plane's socket at ``path``."""

    def __init__(self, path: Path, metrics: GatewayMetrics, *, interval_s: float = SEND_INTERVAL_S) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.interval_s = interval_s  # seconds between two datagrams (sent even when nothing changed)
        # Unique per process start: counters start at 0 under a new id (a restart is never a reset).
        self.gateway_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.sent = 0  # datagrams handed to the kernel (tests, benchmarks)
        self._addr: UnixAddress | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0  # loop time (s) the gateway started
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # an immediate send is scheduled

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._addr = UnixAddress(self.path)
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)
        self._loop = loop
        self._started = loop.time()
        self._tick()

    def send_soon(self, service: str = "") -> None:
        """Send the counters at the next loop turn (a request was held): one datagram however many
        requests are held in this turn."""
        if not self._soon and self._loop is not None:
            self._soon = True
            self._loop.call_soon(self._send_now)

    def _tick(self) -> None:
        assert self._loop is not None
        self.send()
        self._timer = self._loop.call_later(self.interval_s, self._tick)

    def _send_now(self) -> None:
        self._soon = False
        self.send()

    def send(self) -> None:
        sock, addr, loop = self._sock, self._addr, self._loop
        if sock is None or addr is None or loop is None:
            return
        up = loop.time() - self._started
        for datagram in encode(self.gateway_id, up, samples(self.metrics), replica_samples(self.metrics)):
            try:
                sock.sendto(datagram, addr.addr)
            except OSError:
                # No control plane bound (down, restarting) or its queue is full: the next sample
                # carries the cumulative counters.
                return
            self.sent += 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._addr is not None:
            self._addr.close()
            self._addr = None
        self._loop = None
