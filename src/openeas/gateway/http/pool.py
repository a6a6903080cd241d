"""Owns the gateway's side of replicas: one `UpstreamState` per replica (idle keep-alive
connections, load, cool-down) and the `UpstreamConnection` protocol that finds where a replica's
responses end with httptools.

This is the gateway's one transport boundary to replicas: socket and parser errors become calls
on the `Downstream` (the client connection being served), never exceptions in the proxy. It also
answers the one question about delivery the transport can answer: did the replica's TCP stack
acknowledge any byte of the current request (`UpstreamConnection.request_acknowledged`; why that
matters: `openeas.gateway.http.retry`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from openeas.kernel.routing import Upstream

MAX_STATUS_LINE = 8192  # bytes held at most while waiting for an answer's status line to end
MAX_IDLE_PER_UPSTREAM = 512  # idle keep-alive connections kept per replica; more are closed

# Linux `struct tcp_info`: `tcpi_bytes_acked` (u64, since Linux 4.1) is at byte offset 120. It
# counts the SYN too: a connection that carried no data reads 1.
_TCP_INFO_LEN = 136
_BYTES_ACKED_OFFSET = 120
_SYN_BYTES = 1
# Linux only: acknowledge at once. A replica that writes its head and its body in two sends
# without TCP_NODELAY (Python's http.server, Flask's development server) holds the body until
# the head is acknowledged (Nagle), and a long-lived connection delays that ACK by up to 40 ms.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class Downstream(Protocol):
    """The client-side connection an `UpstreamConnection` is currently answering."""

    transport: asyncio.Transport

    def upstream_complete(self, conn: UpstreamConnection) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None: ...
    def upstream_upgraded(self, conn: UpstreamConnection) -> None: ...
    def upstream_pause(self) -> None: ...
    def upstream_resume(self) -> None: ...


class _HeadDone(Exception):
    """Raised from the parser callback to end a HEAD response at its headers."""


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one replica, answering one request at a time.

    Response bytes are forwarded to the client as they arrive; the parser only finds where each
    response ends, so the connection can go back to the pool.
    """

    __slots__ = (
        "client",
        "closed",
        "earlier_request_bytes",
        "got_bytes",
        "head_part",
        "inject",
        "keep_alive",
        "parser",
        "reused",
        "sock",
        "state",
        "status",
        "transport",
        "tunnel",
    )

    def __init__(self, state: UpstreamState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # set to acknowledge at once (TCP_QUICKACK)
        self.parser = HttpResponseParser(self)
        self.client: Downstream | None = None
        self.closed = False
        self.got_bytes = False  # any response byte for the current request
        self.reused = False  # taken from the idle pool (may have been closed by the replica meanwhile)
        # Bytes of the requests this connection carried before the current one. All of them were
        # answered, so the replica's TCP stack acknowledged every one of these bytes.
        self.earlier_request_bytes = 0
        self.status = 0
        self.keep_alive = True
        self.tunnel = False  # the replica answered 101: its bytes go to the client unparsed
        # A header line to add after the status line of the current answer (a group's request:
        # X-OpenEAS-Member), None once added; head_part: the answer's bytes held while its status
        # line is incomplete (a status line split across reads: rare).
        self.inject: bytes | None = None
        self.head_part = b""

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if _TCP_QUICKACK is not None:
            self.sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # a replica talking out of turn: drop the connection
            self.close()
            return
        self.got_bytes = True
        if self.inject is not None:
            data = self._with_injected(data)
            if not data:
                return
        try:
            client.transport.write(data)
        except RuntimeError:
            # uvloop: the client's transport closed (its connection_lost is on its way, and drops
            # this connection). The answer has nowhere to go; nothing to log.
            self.client = None
            self.abort()
            return
        if self.tunnel:
            return
        try:
            self.parser.feed_data(data)
            if self.client is client and self.sock is not None:
                self._quickack()  # the answer goes on: its next segment must not wait on our ACK
        except HttpParserCallbackError as e:
            if not isinstance(e.__context__, _HeadDone):
                raise
            self.parser = HttpResponseParser(self)
            client.upstream_complete(self)
        except HttpParserUpgrade:
            pass  # the 101's head ended; what followed it went to the client already
        except HttpParserError as e:
            if self.tunnel:  # a 101 without "Connection: upgrade": httptools says so this way
                return
            self.abort()
            self._lost(f"invalid HTTP response from replica {self.state.name}: {e}")

    def _quickack(self) -> None:
        """Acknowledge what was read now (Linux resets the flag after each ACK it sends)."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[union-attr, arg-type]
        except (OSError, AttributeError):  # closed meanwhile, or not a TCP socket
            self.sock = None

    def _with_injected(self, data: bytes) -> bytes:
        """``data`` with the ``inject`` line after the answer's status line; b"" while that line
        is not complete yet (kept in ``head_part``). Past MAX_STATUS_LINE bytes without one, the
        bytes go as they are (the parser will judge them)."""
        head = self.head_part + data if self.head_part else data
        end = head.find(b"\r\n")
        if end < 0 and len(head) <= MAX_STATUS_LINE:
            self.head_part = head
            return b""
        self.head_part = b""
        inject, self.inject = self.inject, None
        if end < 0 or inject is None:
            return head
        end += 2
        return head[:end] + inject + head[end:]

    def expect_head_response(self) -> None:
        """The next response answers a HEAD request: it ends with its headers, whatever they say."""
        self.parser = HttpResponseParser(_HeadCallbacks(self))

    def request_acknowledged(self) -> bool | None:
        """Did the replica's TCP stack acknowledge any byte of the current request?

        None when that cannot be known (not Linux, not TCP, socket already gone). Read only on
        failure paths: it is a system call.
        """
        acked = tcp_bytes_acked(self.transport)
        if acked is None:
            return None
        return acked - _SYN_BYTES > self.earlier_request_bytes

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.forget(self)
        reason = f"replica {self.state.name} closed the connection"
        if exc is not None:
            reason += f" ({exc})"
        self._lost(reason)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_pause()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_resume()

    # --- httptools callback -------------------------------------------------------------------
    # Only on_message_complete: status and keep-alive are still readable then, and one Python
    # callback per response is cheaper than two.
    def on_message_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:  # switching protocols (a WebSocket): a tunnel from now on
                self.status = status
                self.tunnel = True
                if self.client is not None:
                    self.client.upstream_upgraded(self)
            return  # else an interim response (100 Continue): the real one follows
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        client = self.client
        if client is not None:
            client.upstream_complete(self)

    # --- helpers ------------------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(self, reason)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def tcp_bytes_acked(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes the peer's TCP stack acknowledged on this connection (SYN included), or None."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, ValueError, AttributeError):  # closed, not TCP, or no TCP_INFO on this OS
        return None
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        return None  # kernel older than 4.1
    acked: int = struct.unpack_from("=Q", info, _BYTES_ACKED_OFFSET)[0]
    return acked


class _HeadCallbacks:
    """Parser callbacks for a response to HEAD: it is complete at the end of its headers."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_headers_complete(self) -> None:
        conn = self.conn
        parser = conn.parser
        status = parser.get_status_code()
        if status >= 200:
            conn.status = status
            conn.keep_alive = parser.should_keep_alive()
            raise _HeadDone


class UpstreamState:
    """A replica as the gateway sees it: idle connections, outstanding requests, cool-down."""

    __slots__ = (
        "cooldown_until",
        "host",
        "idle",
        "kv_usage",
        "name",
        "outstanding",
        "port",
        "retired",
        "upstream",
        "waiting",
    )

    name: str  # "id (host:port)": made on first use (__getattr__), a whole table builds thousands

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.host = upstream.host
        self.port = upstream.port
        self.idle: list[UpstreamConnection] = []
        self.outstanding = 0  # requests sent and not yet answered, all services together
        self.cooldown_until = 0.0  # loop time; set after a failed connect
        self.retired = False  # gone from the routing table: connections are closed, not pooled
        # The engine's own load, pushed by the control plane (gateway/routing/replica_load.py); -1 unknown.
        self.waiting = -1.0  # requests waiting in its engine's queue
        self.kv_usage = -1.0  # KV cache use in [0, 1]

    def __getattr__(self, attr: str) -> str:
        # Called only for a slot not set yet: `name`, set here once (then read as a plain slot).
        if attr != "name":
            raise AttributeError(attr)
        u = self.upstream
        self.name = name = f"{u.replica_id} ({u.host}:{u.port})"
        return name

    def pop_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # most recently used first: warm, least likely to be timed out
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if self.retired or conn.closed or len(self.idle) >= MAX_IDLE_PER_UPSTREAM:
            conn.close()
        else:
            self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def retire(self) -> None:
        self.retired = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    async def connect(self, loop: asyncio.AbstractEventLoop) -> UpstreamConnection:
        """A new connection; raises OSError when the replica cannot be reached."""
        _, conn = await loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        return conn
