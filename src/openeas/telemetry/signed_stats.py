"""Counters from gateways on other machines: the same datagrams as ``DATA/run/control.sock``
carries (openeas.telemetry.gateway_stats), over UDP, each signed with HMAC-SHA256.

Why UDP and a key in the store (docs/scale.md, "Gateways on other machines"): the Unix socket
is reachable only on the server's machine, and its file mode is its authentication. Across
machines the counters keep their shape (fire-and-forget datagrams several times a second, one at
once for a held request, nothing that blocks the gateway) and gain a signature: the active
control plane binds a UDP port, writes ``host:port`` and a random 32-byte key (encrypted with
the store's secret key) into the store's ``meta``, and every gateway that reads the store learns
both with its heartbeat. Whoever cannot read the store and its secret key cannot sign, so cannot
inject counters that scale a service; a datagram that fails the check is dropped and counted.
A replayed datagram is dropped too: each carries the gateway's uptime (``up``), and one older
than the newest seen from that gateway is refused (`ReplayGuard`), so a copy can never turn back
a cumulative counter and make the next one look like new requests.

Wire: ``b"OEs1" + HMAC-SHA256(key, payload) (32 bytes) + payload``. Standard library only: the
gateway process imports it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
from collections import OrderedDict

from openeas.telemetry.gateway_stats import GatewayStats, decode_all

log = logging.getLogger("openeas.telemetry.signed_stats")

MAGIC = b"OEs1"
MAC_BYTES = 32
MAX_GATEWAYS = 4096  # gateway ids the replay guard remembers (the oldest is forgotten first)
_RECV_BYTES = 64 * 1024


def sign(key: bytes, payload: bytes) -> bytes:
    return MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def verify(key: bytes, datagram: bytes) -> bytes | None:
    """The payload of a datagram signed with ``key``; None for anything else."""
    head = len(MAGIC) + MAC_BYTES
    if len(datagram) < head or not datagram.startswith(MAGIC):
        return None
    payload = datagram[head:]
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return payload if hmac.compare_digest(mac, datagram[len(MAGIC) : head]) else None


class ReplayGuard:
    """Refuses a datagram whose gateway uptime is older than the newest seen from that gateway
    (equal passes: one send split into several datagrams shares its uptime)."""

    def __init__(self, max_gateways: int = MAX_GATEWAYS) -> None:
        self.max_gateways = max_gateways
        self._newest: OrderedDict[str, float] = OrderedDict()

    def accept(self, gateway_id: str, uptime_s: float) -> bool:
        newest = self._newest.get(gateway_id)
        if newest is not None and uptime_s < newest:
            return False
        self._newest[gateway_id] = uptime_s
        self._newest.move_to_end(gateway_id)
        while len(self._newest) > self.max_gateways:
            self._newest.popitem(last=False)
        return True


class SignedReceiver:
    """The control plane's side: verify, refuse replays, feed ``stats``. ``feed`` is pure of
    sockets (tests call it with bytes)."""

    def __init__(self, key: bytes, stats: GatewayStats) -> None:
        self.key = key
        self.stats = stats
        self.guard = ReplayGuard()
        self.refused = 0  # datagrams dropped: unsigned, wrongly signed, malformed or replayed

    def feed(self, datagram: bytes, now: float) -> bool:
        payload = verify(self.key, datagram)
        if payload is None:
            self.refused += 1
            return False
        try:
            d = decode_all(payload)
        except ValueError:
            self.refused += 1
            return False
        if not self.guard.accept(d.gateway_id, d.uptime_s):
            self.refused += 1
            return False
        self.stats.observe(
            d.gateway_id, d.samples, now, uptime_s=d.uptime_s, jumped=d.jumped, replicas=d.replicas,
            groups=d.groups, answers=d.answers,
        )  # fmt: skip
        return True


def bind_udp(host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    sock.bind((host, port))
    return sock


async def receive_signed(sock: socket.socket, receiver: SignedReceiver, stop: asyncio.Event) -> None:
    """Feed ``receiver`` with every datagram on ``sock`` until ``stop`` is set (then close it)."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        now = receiver.stats.clock()
        while True:
            try:
                data = sock.recv(_RECV_BYTES)
            except OSError:  # BlockingIOError: drained
                return
            receiver.feed(data, now)

    loop.add_reader(sock.fileno(), readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
        if receiver.refused:
            log.info("refused %d gateway datagrams (unsigned, wrongly signed or replayed)", receiver.refused)
