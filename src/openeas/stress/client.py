"""The HTTP transport of the load generator: raw asyncio protocols, httptools, a connection pool.

The fast path does per request only what it must: one pre-serialized request (head and body
built once per data line) written to an idle keep-alive connection, the answer parsed by
httptools (C), one callback. No per-request task, no header dict, no body buffer: that is what
lets one core offer several times the rate of a general-purpose HTTP client.

Streamed answers (server-sent events) are read event by event: the first event
carrying content is the first token, each content event one output token (or the usage chunk's
``completion_tokens`` when the server sends one).

One connection carries one request at a time (no pipelining). When none is idle the request
waits in a queue while a new connection opens (up to ``max_connections``); its latency still
counts from its due time. A request that got no answer within ``timeout_s`` of its due time
fails as ``timeout`` and its connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence

import httptools

from openeas.stress.generator import OnDone, Outcome

_CONTENT = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')
_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
SWEEP_S = 0.1
MAX_CONNECTING = 8
MEMBER_HEADER = b"x-openeas-member"  # the gateway's name of the group member that answered
"""New connections opened at once. A burst of due requests first waits for the connections that
are about to free up (a fast service returns them within microseconds); only a backlog that
lasts grows the pool, 8 connections at a time, instead of one connection per queued request."""


def build_requests(
    method: str, host: str, port: int, path: str, headers: Mapping[str, str], bodies: Sequence[bytes]
) -> list[bytes]:
    """One complete HTTP/1.1 request per body (head + body), serialized once."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    lowered = {k.lower() for k in headers}
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if "content-type" not in lowered:
        extra += "Content-Type: application/json\r\n"
    if "user-agent" not in lowered:
        extra += "User-Agent: openeas-stress\r\n"
    out = []
    for body in bodies:
        out.append((head + extra + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body)
    return out


class _Conn(asyncio.Protocol):
    __slots__ = (
        "buf", "first_token", "fresh", "intended", "last_token", "member", "on_done", "parser", "pool",
        "sent", "sse", "status", "tokens", "transport", "usage_tokens",
    )  # fmt: skip

    def __init__(self, pool: HttpTransport) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.on_done: OnDone | None = None
        self.intended = 0.0
        self.sent = 0.0
        self.status = 0
        self.sse = False
        self.fresh = False
        self.buf = b""
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.tokens = 0
        self.usage_tokens: int | None = None
        self.member: str | None = None  # a group's test: X-OpenEAS-Member of the answer (_MemberConn)

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        self.pool._connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("protocol")
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.on_done is not None:
            self._fail("reset")
        self.pool._lost(self)

    # -- httptools callbacks ------------------------------------------------------------------------

    # No on_header: a callback per header line costs more than the whole fast path's parsing. A
    # streamed answer is told by its body instead: SSE starts with a field ("data:", "event:"...).

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.fresh = True

    def on_body(self, body: bytes) -> None:
        if self.fresh:
            self.fresh = False
            self.sse = body.lstrip().startswith((b"data:", b"event:", b"id:", b":"))
        if not self.sse:
            return
        data = self.buf + body
        end = data.rfind(b"\n\n")
        if end < 0:
            self.buf = data
            return
        self.buf = data[end + 2 :]
        now = time.monotonic()
        for event in data[:end].split(b"\n\n"):
            if b"data:" not in event:
                continue
            if _CONTENT.search(event):
                if self.first_token is None:
                    self.first_token = now
                self.last_token = now
                self.tokens += 1
            elif b'"usage"' in event:
                m = _USAGE.search(event)
                if m:
                    self.usage_tokens = int(m.group(1))

    def on_message_complete(self) -> None:
        on_done = self.on_done
        if on_done is None:
            return
        self.on_done = None
        tokens = self.usage_tokens if self.usage_tokens is not None and self.first_token else self.tokens
        on_done(
            Outcome(
                self.intended, self.sent, time.monotonic(), self.status, None,
                self.first_token, self.last_token, tokens, self.member,
            )
        )  # fmt: skip
        pool = self.pool
        pool._busy.discard(self)
        if self.parser.should_keep_alive() and self.transport is not None:
            pool._idle_or_next(self)
        else:
            self._close()

    # -- the pool's side ----------------------------------------------------------------------------

    def start(self, request: bytes, intended: float, on_done: OnDone) -> None:
        self.on_done = on_done
        self.intended = intended
        self.status = 0
        self.member = None
        if self.sse:
            self.sse = False
            self.buf = b""
            self.first_token = self.last_token = None
            self.tokens = 0
            self.usage_tokens = None
        self.pool._busy.add(self)
        self.sent = time.monotonic()
        assert self.transport is not None
        self.transport.write(request)
        self.pool.sent_total += 1

    def _fail(self, error: str) -> None:
        on_done = self.on_done
        if on_done is None:
            return
        self.on_done = None
        self.pool._busy.discard(self)
        on_done(Outcome(self.intended, self.sent, time.monotonic(), self.status, error, member=self.member))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _MemberConn(_Conn):
    """A connection of a group's test: also reads the member that answered from its header (a
    callback per header line: only a group's test pays for it)."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == MEMBER_HEADER:
            self.member = value.decode("latin-1")


class HttpTransport:
    """A pool of keep-alive connections to one ``host:port`` sending pre-built requests."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        *,
        max_connections: int = 2000,
        timeout_s: float = 30.0,
        by_member: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.requests = list(requests)
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.sent_total = 0
        self.connect_errors = 0
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._queue: deque[tuple[int, float, OnDone]] = deque()
        self._open = 0
        self._connecting = 0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep())
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn_class = _MemberConn if by_member else _Conn  # by_member: read X-OpenEAS-Member

    # -- Transport protocol -------------------------------------------------------------------------

    def send(self, body: int, intended: float, on_done: OnDone) -> None:
        if self._idle:
            self._idle.pop().start(self.requests[body], intended, on_done)
            return
        self._queue.append((body, intended, on_done))
        if (
            self._connecting < MAX_CONNECTING
            and self._connecting < len(self._queue)
            and self._open + self._connecting < self.max_connections
        ):
            self._connect()

    def in_flight(self) -> int:
        return len(self._busy) + len(self._queue)

    @property
    def connections(self) -> int:
        return self._open

    async def warm(self, n: int) -> None:
        """Open ``n`` connections ahead of the first step (their setup is not the service's time)."""
        for _ in range(min(n, self.max_connections) - self._open - self._connecting):
            self._connect()
        deadline = time.monotonic() + 5.0
        while self._connecting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._closed = True
        self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()
        for conn in [*self._idle, *self._busy]:
            conn._fail("reset")
            conn._close()
        while self._queue:
            _body, intended, on_done = self._queue.popleft()
            now = time.monotonic()
            on_done(Outcome(intended, now, now, 0, "reset"))
        self._idle.clear()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper

    # -- connections --------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._connecting += 1
        task = self._loop.create_task(self._open_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_one(self) -> None:
        try:
            await self._loop.create_connection(lambda: self._conn_class(self), self.host, self.port)
        except OSError:
            self._connecting -= 1
            self.connect_errors += 1
            if self._queue and not self._closed:
                _body, intended, on_done = self._queue.popleft()
                now = time.monotonic()
                on_done(Outcome(intended, now, now, 0, "connect"))
                if self._queue and self._connecting == 0 and self._open < self.max_connections:
                    self._connect()

    def _connected(self, conn: _Conn) -> None:
        self._connecting -= 1
        self._open += 1
        if self._closed:
            conn._close()
            return
        self._idle_or_next(conn)

    def _idle_or_next(self, conn: _Conn) -> None:
        if self._queue:
            body, intended, on_done = self._queue.popleft()
            conn.start(self.requests[body], intended, on_done)
        else:
            self._idle.append(conn)

    def _lost(self, conn: _Conn) -> None:
        self._open -= 1
        self._busy.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._queue and not self._closed and self._open + self._connecting < self.max_connections:
            self._connect()

    async def _sweep(self) -> None:
        """Fail requests past their timeout (counted from their due time)."""
        while True:
            await asyncio.sleep(min(SWEEP_S, self.timeout_s / 4))
            limit = time.monotonic() - self.timeout_s
            for conn in [c for c in self._busy if c.intended < limit]:
                conn._fail("timeout")
                conn._close()
            q = self._queue
            while q and q[0][1] < limit:
                _body, intended, on_done = q.popleft()
                now = time.monotonic()
                on_done(Outcome(intended, now, now, 0, "timeout"))
