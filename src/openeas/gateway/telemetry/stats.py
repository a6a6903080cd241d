"""Owns the gateway's side of the control plane's per-service counters: `StatsSender` samples
every service's arrivals, in-flight and held requests, every replica's in-flight requests and
whether it is routed, every service's answers and every service group member's live answers (by
status, by latency: the console's rates and the staged rollout's input), every `SEND_INTERVAL_S`,
and sends them in a datagram to ``DATA/run/control.sock`` (wire format and receiver:
:mod:`openeas.telemetry.gateway_stats`), and sends one at once when a request is held, so the
control plane can scale a service from zero without waiting for the next sample.

It also sends at once when a service's in-flight count jumps: every datagram sets each service's
``push_at`` (`push_threshold`: twice the in-flight count it carried, at least
`JUMP_MIN_IN_FLIGHT`), the proxy calls `StatsSender.jump` when a request brings the count to it
(one integer compare per request), and the datagram names the services that jumped, so the
autoscaler decides on them at once. Jump datagrams are at least `JUMP_GAP_S` apart: a burst
costs a handful of datagrams (the threshold doubles with each), never one per request.

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

from openeas.gateway.routing.registry import StatsTarget
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.telemetry.gateway_stats import (
    JUMP_GAP_S,
    JUMP_MIN_IN_FLIGHT,
    SEND_INTERVAL_S,
    MemberSample,
    ReplicaSample,
    ServiceSample,
    encode,
)
from openeas.telemetry.signed_stats import sign
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


def answer_samples(metrics: GatewayMetrics) -> dict[str, MemberSample]:
    """Every answered service's answers by status and latency (the same counters as /metrics'
    ``openeas_gateway_requests_total`` and request duration histogram), cumulative."""
    return {
        name: MemberSample({str(code): n for code, n in sorted(m.by_code.items())}, tuple(m.buckets))
        for name, m in metrics.services.items()
        if m.latency_count
    }


def push_threshold(in_flight: int) -> int:
    """The in-flight count that is a jump after a datagram that carried ``in_flight``."""
    return max(JUMP_MIN_IN_FLIGHT, 2 * in_flight)


def jumped(metrics: GatewayMetrics) -> list[str]:
    """The services whose in-flight count reached their threshold since the last datagram."""
    return [name for name, m in metrics.services.items() if m.in_flight >= m.push_at]


def rearm(metrics: GatewayMetrics) -> None:
    """A datagram carried every service's counters: the next jump is measured from them."""
    for m in metrics.services.values():
        m.push_at = push_threshold(m.in_flight)


def replica_samples(metrics: GatewayMetrics) -> dict[str, ReplicaSample]:
    """Every replica the gateway knows: its requests in flight, whether it is routed (the same
    gauges as /metrics' ``openeas_gateway_replica_*``); empty when the proxy did not wire them."""
    if metrics.replicas is None:
        return {}
    return {rid: ReplicaSample(in_flight, routed) for rid, routed, in_flight in metrics.replicas()}


def group_samples(metrics: GatewayMetrics) -> dict[str, dict[str, MemberSample]]:
    """Every group member's live traffic (cumulative since this gateway started), by group: the
    same counters ``GET /groups/<group>`` shows under ``live``."""
    out: dict[str, dict[str, MemberSample]] = {}
    for (group, member), m in metrics.groups.items():
        live = m.live
        by_code = {str(code): n for code, n in sorted(live.by_code.items())}
        out.setdefault(group, {})[member] = MemberSample(by_code, tuple(live.buckets))
    return out


class StatsSender:
    """Sends this gateway's per-service counters to the control plane's socket at ``path``."""

    def __init__(
        self,
        path: Path,
        metrics: GatewayMetrics,
        *,
        interval_s: float = SEND_INTERVAL_S,
        jump_gap_s: float = JUMP_GAP_S,
    ) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.interval_s = interval_s  # seconds between two datagrams (sent even when nothing changed)
        self.jump_gap_s = jump_gap_s  # seconds between two datagrams sent for a jump
        # Unique per process start: counters start at 0 under a new id (a restart is never a reset).
        self.gateway_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.sent = 0  # datagrams handed to the kernel (tests, benchmarks)
        self._addr: UnixAddress | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0  # loop time (s) the gateway started
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # an immediate send is scheduled
        self._jump_timer: asyncio.TimerHandle | None = None  # a send for a jump is scheduled
        self._last_jump = -float("inf")  # loop time (s) of the last send for a jump

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.open()
        self._loop = loop
        self._started = loop.time()
        self._tick()

    def open(self) -> None:
        """Make the socket `transmit` sends on (a test's sender records instead)."""
        self._addr = UnixAddress(self.path)
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)

    def send_soon(self, service: str = "") -> None:
        """Send the counters at the next loop turn (a request was held): one datagram however many
        requests are held in this turn."""
        if not self._soon and self._loop is not None:
            self._soon = True
            self._loop.call_soon(self._send_now)

    def jump(self, service: str = "") -> None:
        """A service's in-flight count reached its threshold: send at once, or when
        ``jump_gap_s`` has passed since the last send for a jump."""
        loop = self._loop
        if self._jump_timer is not None or loop is None:
            return  # one is on its way; it carries this jump too
        wait = max(0.0, self._last_jump + self.jump_gap_s - loop.time())
        self._jump_timer = loop.call_later(wait, self._send_jump)

    def _send_jump(self) -> None:
        self._jump_timer = None
        if self._loop is not None:
            self._last_jump = self._loop.time()
        self.send()

    def _tick(self) -> None:
        assert self._loop is not None
        self.send()
        self._timer = self._loop.call_later(self.interval_s, self._tick)

    def _send_now(self) -> None:
        self._soon = False
        self.send()

    def send(self) -> None:
        loop = self._loop
        if loop is None:
            return
        metrics = self.metrics
        up = loop.time() - self._started
        datagrams = encode(
            self.gateway_id,
            up,
            samples(metrics),
            jumped(metrics),
            replicas=replica_samples(metrics),
            groups=group_samples(metrics),
            answers=answer_samples(metrics),
        )
        rearm(metrics)
        if self._jump_timer is not None:  # this datagram carries the jump it was scheduled for
            self._jump_timer.cancel()
            self._jump_timer = None
        for datagram in datagrams:
            if not self.transmit(datagram):
                return
            self.sent += 1

    def transmit(self, datagram: bytes) -> bool:
        """Hand one datagram to the kernel; False when it could not (the rest is not tried)."""
        sock, addr = self._sock, self._addr
        if sock is None or addr is None:
            return False
        try:
            sock.sendto(datagram, addr.addr)
        except OSError:
            # No control plane bound (down, restarting) or its queue is full: the next sample
            # carries the cumulative counters.
            return False
        return True

    def close(self) -> None:
        for timer in (self._timer, self._jump_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._jump_timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._addr is not None:
            self._addr.close()
            self._addr = None
        self._loop = None


class SignedStatsSender(StatsSender):
    """The same counters over UDP, signed (openeas.telemetry.signed_stats), for a gateway that is
    not on the control plane's machine. Where to and the key come from the store, with each
    heartbeat (`retarget`); until the first one, and while none is advertised, nothing is sent
    (the next datagram carries the cumulative counters)."""

    def __init__(self, metrics: GatewayMetrics, **kwargs: float) -> None:
        super().__init__(Path("/dev/null"), metrics, **kwargs)
        self.target: StatsTarget | None = None

    def retarget(self, target: StatsTarget | None) -> None:
        self.target = target

    def open(self) -> None:
        self._sock = None  # opened with the first target (its address family)

    def transmit(self, datagram: bytes) -> bool:
        target = self.target
        if target is None:
            return False
        if self._sock is None or self._sock.family != _family(target.host):
            if self._sock is not None:
                self._sock.close()
            kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            self._sock = socket.socket(_family(target.host), kind)
        try:
            self._sock.sendto(sign(target.key, datagram), (target.host, target.port))
        except OSError:  # no route, a full buffer, a name that does not resolve: the next one carries all
            return False
        return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
