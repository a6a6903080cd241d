"""A driven loop around the gateway's real client protocol, without sockets.

`ClientConnection` runs on a loop the test drives (`FakeLoop`: time moves only when a test says
so, callbacks run when it asks), talks to a client transport that records what was written
(`FakeTransport`), and reaches replicas the test plays (`Replica`: its `connect` hands out
`UpstreamConnection`s over fake transports, and the test feeds their response bytes). Everything
under test is the real code: parser, routing, pool, retry decisions, metrics. Shared by
tests/test_gateway_protocol.py and tests/test_gateway_exchange.py.
"""

from __future__ import annotations

import heapq
import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

import pytest

from openeas.gateway.context import ProxyContext
from openeas.gateway.groups.split import build_groups
from openeas.gateway.http.pool import UpstreamConnection, UpstreamState
from openeas.gateway.http.proxy import ClientConnection
from openeas.gateway.routing.routes import UpstreamKey, build_routes
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.kernel.groups import GroupDef
from openeas.kernel.routing import Route, RoutingTable, Upstream

# --- fakes around the protocol ------------------------------------------------------------------


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: FakeHandle) -> bool:
        return self.when < other.when


class FakeLoop:
    """The four loop methods the proxy uses, on a clock that only the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ready: deque[FakeHandle] = deque()
        self.timers: list[tuple[float, int, FakeHandle]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now, callback, args)
        self.ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback, args)
        self._seq += 1
        heapq.heappush(self.timers, (handle.when, self._seq, handle))
        return handle

    def pending(self) -> list[str]:
        """Names of the timers still due, but the context's sweep (it runs while connections exist)."""
        return [
            h.callback.__name__
            for _, _, h in self.timers
            if not h.cancelled and h.callback.__name__ != "_sweep"
        ]

    def create_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self.call_soon(self._finish, coro)

    @staticmethod
    def _finish(coro: Coroutine[Any, Any, None]) -> None:
        # The fake replicas never wait: one step runs a task to its end.
        with pytest.raises(StopIteration):
            coro.send(None)

    def run_ready(self) -> None:
        while self.ready:
            handle = self.ready.popleft()
            if not handle.cancelled:
                handle.callback(*handle.args)

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that falls due, in order, at its own time."""
        end = self.now + seconds
        self.run_ready()
        while self.timers and self.timers[0][0] <= end:
            when, _, handle = heapq.heappop(self.timers)
            self.now = when
            if not handle.cancelled:
                handle.callback(*handle.args)
            self.run_ready()
        self.now = end


class FakeSocket:
    """Just enough of a TCP socket for the pool: a Linux tcp_info whose bytes_acked is what the
    transport's peer acknowledged (`pool.tcp_bytes_acked`), and TCP_QUICKACK requests, counted."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        info = bytearray(size)
        struct.pack_into("=Q", info, 120, self.transport.acked)
        return bytes(info)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        assert (level, option, value) == (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1), "only TCP_QUICKACK"
        self.transport.quickacks += 1


class FakeTransport:
    """Records writes, pauses and closes; a close reaches the protocol on the next loop turn."""

    def __init__(self, loop: FakeLoop, protocol: Any, *, tcp: bool = False) -> None:
        self.loop = loop
        self.protocol = protocol
        self.data = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.tcp = tcp  # offers a socket whose peer acknowledged ``acked`` bytes (SYN included)
        self.acked = 1
        self.acking = True  # the peer's kernel acknowledges what we write
        self.quickacks = 0  # TCP_QUICKACK requests on its socket
        self.sock = FakeSocket(self)

    def write(self, data: bytes) -> None:
        if self.closed:  # as uvloop does
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
            )
        self.data += data
        if self.acking:
            self.acked += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket" and self.tcp:  # still open in connection_lost, as with asyncio and uvloop
            return self.sock
        return default

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data.clear()
        return data


class Replica(UpstreamState):
    """A replica the test plays: refuses connections, or hands out connections it can answer on."""

    def __init__(self, loop: FakeLoop, upstream: Upstream) -> None:
        super().__init__(upstream)
        self.loop = loop
        self.refuse = False
        self.tcp = False  # its connections can say what the replica's kernel acknowledged
        self.acks = True  # its kernel acknowledges the bytes written to it
        self.conns: list[UpstreamConnection] = []

    async def connect(self, loop: Any) -> UpstreamConnection:
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.open()

    def open(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        fake = FakeTransport(self.loop, conn, tcp=self.tcp)
        fake.acking = self.acks
        conn.connection_made(fake)  # type: ignore[arg-type]
        self.conns.append(conn)
        return conn

    def received(self, i: int = -1) -> bytes:
        """What connection ``i`` carried to the replica so far."""
        return bytes(transport(self.conns[i]).data)

    def answer(self, data: bytes, i: int = -1) -> None:
        self.conns[i].data_received(data)
        self.loop.run_ready()

    def close(self, i: int = -1) -> None:
        """The replica closes connection ``i`` (EOF, then the connection is gone)."""
        conn = self.conns[i]
        transport(conn).closed = True
        conn.eof_received()
        conn.connection_lost(None)
        self.loop.run_ready()


def transport(conn: UpstreamConnection) -> FakeTransport:
    t = conn.transport
    assert isinstance(t, FakeTransport)
    return t


class Client:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.conn = ClientConnection(gw.ctx, gw.loop)  # type: ignore[arg-type]
        self.transport = FakeTransport(gw.loop, self.conn)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)
        self.gw.loop.run_ready()

    def received(self) -> bytes:
        return self.transport.take()


class Gateway:
    """The shared context of real client connections, with replicas played by the test."""

    def __init__(self, *routes: Route, groups: Mapping[str, GroupDef] | None = None, **limits: Any) -> None:
        self.groups = dict(groups or {})  # service groups (split.py, mirror.py) over the routes
        self.loop = FakeLoop()
        self.metrics = GatewayMetrics()
        self.ctx = ProxyContext(self.metrics, **limits)
        self.states: dict[UpstreamKey, UpstreamState] = {}
        self.replicas: dict[str, Replica] = {}
        self.set_routes(*routes)

    def set_routes(self, *routes: Route) -> None:
        for r in routes:
            for u in r.upstreams:
                key = (u.replica_id, u.host, u.port)
                if key not in self.states:
                    self.states[key] = self.replicas[u.replica_id] = Replica(self.loop, u)
        table = RoutingTable(version=1, routes={r.service: r for r in routes})
        self.ctx.routes = build_routes(table, self.ctx.routes, self.states, self.metrics)
        self.ctx.groups = build_groups(self.groups, self.ctx.routes, self.metrics)
        self.ctx.wake_held()  # as `openeas.gateway.Gateway.apply` does

    def client(self) -> Client:
        return Client(self)

    def codes(self, service: str = "svc") -> dict[int, int]:
        return dict(self.metrics.services[service].by_code)

    def in_flight(self, service: str = "svc") -> int:
        return self.metrics.services[service].in_flight


def route(*replicas: str, service: str = "svc", **kw: Any) -> Route:
    ups = tuple(Upstream(replica_id=r, host="10.0.0.1", port=8000 + i) for i, r in enumerate(replicas))
    kw.setdefault("balancer", "round-robin")  # deterministic: the first pick is the first replica
    kw.setdefault("hold_timeout_s", 2.0)
    return Route(service=service, token=None, upstreams=ups, **kw)


def error(status: int, code: str, message: str, *, close: bool = False) -> bytes:
    """The exact bytes of a gateway error answer."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, HTTPStatus(status).phrase.encode())
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


GET = b"GET /api/predict/svc/v1/x?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
GET_UPSTREAM = b"GET /v1/x?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
POST_HEAD = b"POST /api/predict/svc/run HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n"
POST_HEAD_UPSTREAM = b"POST /run HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
