"""The client side of the gateway: an `asyncio.Protocol` that parses requests with httptools,
authenticates and routes them, and streams them to a pooled upstream connection.

Hot-path rules (see bench/RESULTS.md for what each bought): no framework objects, no per-request
task or logging; the request head is rebuilt once from the parsed headers, bodies and responses are
forwarded as bytes as they arrive; a task is created only to open a new upstream connection.
"""

from __future__ import annotations

import asyncio
import time

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from openeas.gateway.auth import DEFAULT_MAX_DATE_SKEW_S, AuthError, authorize, verify_content_md5
from openeas.gateway.errors import GatewayError, error_response, plain_response
from openeas.gateway.metrics import GatewayMetrics, ServiceMetrics
from openeas.gateway.pool import MAX_IDLE_PER_UPSTREAM, UpstreamConnection, UpstreamState
from openeas.gateway.resolve import split_predict_path
from openeas.gateway.routes import RouteState

REPLAY_LIMIT_BYTES = 1024 * 1024  # request bytes kept to resend on another replica after a stale connection
DEFAULT_COOLDOWN_S = 1.5  # a replica whose connect failed is avoided this long
DEFAULT_HOLD_S = 2.0  # a request with no reachable replica waits this long for one before a 503
HOLD_POLL_S = 0.05  # how often a held request looks at the routing table again

# Phases of a client connection.
IDLE = 0  # waiting for (or parsing the head of) a request
PROXYING = 1  # the request goes to a replica; its response streams back
ANSWERED = 2  # the response is complete; the rest of the request body is read and discarded
CLOSED = 3

# Request headers we look at; everything else is forwarded unchanged.
_AUTH, _HOP, _TE, _CLEN, _CTYPE, _MD5, _DATE = range(7)
_SPECIAL = {
    b"authorization": _AUTH,
    b"connection": _HOP,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _HOP,
    b"transfer-encoding": _TE,
    b"content-length": _CLEN,
    b"content-type": _CTYPE,
    b"content-md5": _MD5,
    b"date": _DATE,
}
_HEAD = b"HEAD"
_CHUNKED_HEADER = b"Transfer-Encoding: chunked\r\n\r\n"
_END_HEAD = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


# Request targets recently split into (service, upstream path): clients repeat the same few URLs.
_RESOLVED: dict[bytes, tuple[str, bytes] | None] = {}
_RESOLVED_MAX = 4096


class _Pipelined(Exception):
    """A second request arrived in the same read as the first one."""


class ProxyContext:
    """What every client connection shares: the current routes, metrics and settings."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        max_date_skew_s: float = DEFAULT_MAX_DATE_SKEW_S,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        hold_s: float = DEFAULT_HOLD_S,
    ) -> None:
        self.routes: dict[str, RouteState] = {}  # swapped whole by the gateway, never mutated
        self.metrics = metrics
        self.max_date_skew_s = max_date_skew_s
        self.cooldown_s = cooldown_s
        # Seconds a request waits for a replica when none is reachable (one just turning Ready,
        # or restarting after a crash) before it gets a 503: requests are held, not dropped.
        self.hold_s = hold_s
        self.connections: set[ClientConnection] = set()


class ClientConnection(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = HttpRequestParser(self)
        self.phase = IDLE
        self.gen = 0  # bumped per request, so late callbacks of an old request are ignored
        self.stash: list[bytes] = []  # bytes of the next request received while answering this one
        self.paused_by_upstream = False
        self.paused_by_stash = False
        self.write_paused = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[bytes] = [b""]  # [0] becomes the request line
        self.auth: bytes | None = None
        self.ctype: bytes | None = None
        self.md5: bytes | None = None
        self.date: bytes | None = None
        self.chunked = False
        self.clen = 0
        self.is_head = False
        self.body_parts: list[bytes] | None = None  # body of a signed request, to check its Content-MD5
        self.keep_alive = True
        self.req_done = False
        self.route: RouteState | None = None
        self.svcm: ServiceMetrics | None = None
        self.conn: UpstreamConnection | None = None
        self.up: UpstreamState | None = None
        self.pending: list[bytes] | None = None  # request bytes waiting for a connection
        self.replay: list[bytes] | None = None  # request bytes written so far (to resend), or None
        self.replay_size = 0
        self.body_len = 0
        self.body_md5: bytes | None = None  # signed request: buffer the body and check its md5
        self.tried: list[UpstreamState] | None = None
        self.fresh_retry = False
        self.force_new = False
        self.timer: asyncio.TimerHandle | None = None
        self.hold_until: float | None = None  # loop time after which a request with no replica gets 503
        self.t0 = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.phase != IDLE and self.req_done:
            # The client sent its next request before we finished answering this one.
            self.stash.append(data)
            self.paused_by_stash = True
            self.transport.pause_reading()
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._local_error(GatewayError(501, "upgrade_not_supported", "protocol upgrades are unsupported"))
        except HttpParserError as e:
            if isinstance(e.__context__, _Pipelined):
                return  # served after the current response; see on_message_begin
            if self.phase == IDLE:
                self._local_error(GatewayError(400, "bad_request", f"malformed HTTP request: {e}"))
            else:
                self._abort(400)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.phase == PROXYING:
            self._drop_upstream(abort=True)
            self._record(499)  # client closed before the response completed (nginx's code)
        self._clear_timer()
        self.phase = CLOSED

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    # --- Downstream (called by UpstreamConnection) ----------------------------------------------
    def upstream_pause(self) -> None:
        if not self.paused_by_upstream:
            self.paused_by_upstream = True
            self.transport.pause_reading()

    def upstream_resume(self) -> None:
        if self.paused_by_upstream:
            self.paused_by_upstream = False
            if not self.paused_by_stash:
                self.transport.resume_reading()

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        conn.client = None
        up = self.up
        self.up = None
        keep = conn.keep_alive
        if up is not None:
            up.outstanding -= 1
            if self.req_done and keep:
                if self.write_paused:
                    conn.transport.resume_reading()  # type: ignore[union-attr]
                idle = up.idle  # up.release(conn), inlined
                if up.retired or conn.closed or len(idle) >= MAX_IDLE_PER_UPSTREAM:
                    conn.close()
                else:
                    idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        if not keep:
            self.keep_alive = False  # the replica's "Connection: close" went to the client as is
        if self.paused_by_upstream:
            self.upstream_resume()
        svcm = self.svcm
        if svcm is not None:
            self.svcm = None
            svcm.finish(conn.status, self.loop.time() - self.t0)
        if self.timer is None and self.keep_alive and self.req_done:
            if self.paused_by_stash:
                self._next_request()
            else:  # _next_request, inlined
                self.gen += 1
                self._reset()
                self.phase = IDLE
        else:
            self._answered()

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None:
        if conn is not self.conn or self.phase != PROXYING:
            return
        self.conn = None
        failed = self.up
        self._release_up()
        self.upstream_resume()
        if not conn.got_bytes:
            if self.replay is not None and failed is not None:
                # Closed without a byte of answer: most likely a pooled keep-alive connection the
                # replica had closed, or a replica killed before it read the request (its accept
                # queue is reset). Resend elsewhere; a stale pooled connection also earns one retry
                # on a fresh connection to the same replica.
                self.pending = self.replay + (self.pending or [])
                self.replay = None
                self.replay_size = 0
                self._retry(failed, reason, stale=conn.reused, connect_failed=False)
                return
            self._fail(GatewayError(502, "upstream_failed", f"{reason} before answering"))
            return
        # Part of the response already went to the client: all we can do is end the connection.
        self._record(502)
        self._close()

    # --- httptools callbacks ------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self.phase != IDLE:
            # A pipelined request in the same read: close after this response; the client resends.
            self.keep_alive = False
            raise _Pipelined
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _SPECIAL.get(name.lower())
        if kind is None:
            self.headers += (name, b": ", value, b"\r\n")
        elif kind == _AUTH:
            self.auth = value
        elif kind == _TE:
            self.chunked = True
        elif kind != _HOP:
            if kind == _CLEN:
                self.clen = int(value)  # llhttp accepted it: digits only
            elif kind == _CTYPE:
                self.ctype = value
            elif kind == _MD5:
                self.md5 = value
            else:
                self.date = value
            self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.t0 = self.loop.time()
        self.keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        url = self.url
        target = _RESOLVED.get(url)
        if target is None:
            target = split_predict_path(url)
            if len(_RESOLVED) >= _RESOLVED_MAX:
                _RESOLVED.clear()
            _RESOLVED[url] = target
        if target is None:
            self._local(method)
            return
        service, upath = target
        rs = self.ctx.routes.get(service)
        if rs is None:
            self._local_error(GatewayError(404, "service_not_found", f"service '{service}' not found"))
            return
        self.route = rs
        svcm = self.svcm = rs.metrics
        svcm.in_flight += 1
        self.phase = PROXYING
        creds = rs.creds
        auth = self.auth
        if creds is not None and not creds.fast_match(auth):
            try:
                self.body_md5 = authorize(
                    creds,
                    service,
                    self.auth,
                    method=method,
                    content_md5=self.md5,
                    content_type=self.ctype,
                    date=self.date,
                    path=self.url.partition(b"?")[0],
                    now=time.time(),
                    max_skew_s=self.ctx.max_date_skew_s,
                )
            except AuthError as e:
                self._fail(e)
                return
        if rs.balancer is None:
            self._fail(GatewayError(500, "invalid_balancer", rs.balancer_error or "invalid balancer"))
            return
        if self.clen > rs.max_body_bytes:
            self._fail(self._too_large(rs), close=True)
            return
        headers = self.headers
        headers[0] = method + b" " + upath + b" HTTP/1.1\r\n"
        headers.append(_CHUNKED_HEADER if self.chunked else _END_HEAD)
        head = b"".join(headers)
        if rs.timeout_s is not None:
            self.timer = self.loop.call_later(rs.timeout_s, self._on_timeout, self.gen)
        is_head = self.is_head = method == _HEAD
        if self.body_md5 is not None:
            self.pending = [head]  # sent once the body's Content-MD5 checks out
            return
        # Fast path, the same steps as _dispatch → _use → _attach: a replica with an idle pooled
        # connection gets the head in one write.
        ups = rs.upstreams
        i = rs.balancer.pick(ups, self.t0)  # t0 is the loop's time now
        if i >= 0:
            up = ups[i]
            idle = up.idle
            if idle:
                conn: UpstreamConnection | None = idle.pop()  # most recent: warm, least likely timed out
                if conn is not None and conn.closed:
                    conn = up.pop_idle()
                if conn is not None:
                    self.up = up
                    up.outstanding += 1
                    conn.client = self
                    conn.reused = True
                    conn.got_bytes = False
                    if is_head:
                        conn.expect_head_response()
                    self.conn = conn
                    transport = conn.transport
                    assert transport is not None
                    if self.write_paused:
                        transport.pause_reading()
                    transport.write(head)
                    self.replay_size = len(head)
                    self.replay = [head]
                    return
        self.pending = [head]
        self._dispatch_to(rs, i)  # not _dispatch: a second pick would move round-robin on twice

    def on_body(self, data: bytes) -> None:
        if self.phase != PROXYING:
            return  # answered already: discard
        if self.body_md5 is not None:
            if self.body_parts is None:
                self.body_parts = []
            self.body_parts.append(data)
        if self.chunked:
            self.body_len += len(data)
            rs = self.route
            if rs is not None and self.body_len > rs.max_body_bytes:
                self._fail(self._too_large(rs), close=True)
                return
            self._send(b"%x\r\n" % len(data))
            self._send(data)
            self._send(b"\r\n")
        else:
            self._send(data)

    def on_message_complete(self) -> None:
        phase = self.phase
        self.req_done = True
        if phase == PROXYING:
            if self.chunked:
                self._send(_LAST_CHUNK)
            expected = self.body_md5
            if expected is not None:
                try:
                    verify_content_md5(expected, b"".join(self.body_parts or ()))
                except AuthError as e:
                    self._fail(e)
                    return
                self.body_md5 = None
                self.body_parts = None
                self._dispatch()
        elif phase == ANSWERED:
            self._next_request()

    # --- request flow ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None and self.pending is None:
            conn.transport.write(data)  # type: ignore[union-attr]
            replay = self.replay
            if replay is not None:
                self.replay_size += len(data)
                if self.replay_size > REPLAY_LIMIT_BYTES:
                    self.replay = None
                else:
                    replay.append(data)
        elif self.pending is not None:
            self.pending.append(data)

    def _dispatch(self) -> None:
        rs = self.route
        assert rs is not None and rs.balancer is not None
        self._dispatch_to(rs, rs.balancer.pick(rs.upstreams, self.loop.time(), self.tried or ()))

    def _dispatch_to(self, rs: RouteState, i: int) -> None:
        """Send to ``rs.upstreams[i]``, or hold the request when the balancer found none (-1)."""
        if i < 0:
            self._hold(GatewayError(503, "no_ready_replica", f"service '{rs.service}' has no ready replica"))
            return
        self._use(rs.upstreams[i])

    def _hold(self, err: GatewayError) -> None:
        """No replica to send to now: wait for the routing table to offer one, up to hold_s."""
        now = self.loop.time()
        if self.hold_until is None:
            self.hold_until = now + self.ctx.hold_s
        if now >= self.hold_until:
            self._fail(err)
            return
        self.loop.call_later(HOLD_POLL_S, self._resume, self.gen)

    def _resume(self, gen: int) -> None:
        if gen != self.gen or self.phase != PROXYING or self.route is None:
            return
        rs = self.ctx.routes.get(self.route.service)
        if rs is None or rs.balancer is None:
            self._fail(GatewayError(404, "service_not_found", f"service '{self.route.service}' not found"))
            return
        self.route = rs
        self.tried = None
        self.force_new = False
        self._dispatch()

    def _use(self, up: UpstreamState) -> None:
        self.up = up
        up.outstanding += 1
        idle = up.idle
        if idle and not self.force_new:
            conn: UpstreamConnection | None = idle.pop()  # most recent: warm, least likely timed out
            if conn is not None and conn.closed:
                conn = up.pop_idle()
            if conn is not None:
                self._attach(conn, reused=True)
                return
        self.loop.create_task(self._connect(up, self.gen))

    async def _connect(self, up: UpstreamState, gen: int) -> None:
        try:
            conn = await up.connect(self.loop)
        except OSError as e:
            up.cooldown_until = self.loop.time() + self.ctx.cooldown_s
            if gen == self.gen and self.up is up and self.phase == PROXYING:
                self._release_up()
                reason = f"connect to replica {up.name} failed: {e.strerror or e}"
                self._retry(up, reason, stale=False, connect_failed=True)
            return
        if gen != self.gen or self.up is not up or self.phase != PROXYING:
            up.release(conn)  # the request went away meanwhile
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        conn.client = self
        conn.reused = reused
        conn.got_bytes = False
        if self.is_head:
            conn.expect_head_response()
        self.conn = conn
        transport = conn.transport
        assert transport is not None
        if self.write_paused:
            transport.pause_reading()
        pending = self.pending
        self.pending = None
        assert pending is not None
        if len(pending) == 1:
            data = pending[0]
            transport.write(data)
            self.replay_size = len(data)
            self.replay = pending
            return
        transport.writelines(pending)
        size = 0
        for p in pending:
            size += len(p)
        self.replay_size = size
        self.replay = pending if size <= REPLAY_LIMIT_BYTES else None

    def _retry(self, failed: UpstreamState, reason: str, *, stale: bool, connect_failed: bool) -> None:
        rs = self.route
        assert rs is not None and rs.balancer is not None
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        tried.append(failed)
        self.force_new = False
        i = rs.balancer.pick(rs.upstreams, self.loop.time(), tried)
        if i < 0 and stale and not self.fresh_retry:
            # Every replica tried; a stale pooled connection says little: retry on a new connection.
            self.fresh_retry = True
            self.force_new = True
            self._use(failed)
            return
        if i < 0:
            if not connect_failed:
                self._fail(GatewayError(502, "upstream_failed", f"{reason} before answering"))
            else:
                self._hold(
                    GatewayError(
                        503, "no_ready_replica", f"service '{rs.service}' has no reachable replica: {reason}"
                    )
                )
            return
        self._use(rs.upstreams[i])

    def _on_timeout(self, gen: int) -> None:
        self.timer = None
        if gen != self.gen or self.phase != PROXYING:
            return
        rs = self.route
        assert rs is not None
        err = GatewayError(
            408, "timeout", f"service '{rs.service}' did not answer within {rs.timeout_s:g} s (timeout_s)"
        )
        conn = self.conn
        if conn is not None and conn.got_bytes:
            self._drop_upstream(abort=True)
            self._record(408)
            self._close()
        else:
            self._fail(err)

    # --- answers from the gateway itself --------------------------------------------------------
    def _too_large(self, rs: RouteState) -> GatewayError:
        return GatewayError(
            413,
            "body_too_large",
            f"request body exceeds {rs.max_body_bytes} bytes, the limit of service '{rs.service}'",
        )

    def _local(self, method: bytes) -> None:
        path = self.url.partition(b"?")[0]
        close = not self.keep_alive
        if method == b"GET" and path == b"/metrics":
            body = self.ctx.metrics.render()
            self._local_answer(plain_response(200, body, b"text/plain; version=0.0.4", close=close))
        elif method == b"GET" and path == b"/healthz":
            self._local_answer(plain_response(200, b'{"status":"ok"}', b"application/json", close=close))
        else:
            shown = path.decode("latin-1")
            self._local_error(
                GatewayError(404, "not_found", f"no route for {shown!r}: use /api/predict/<service>[/path]")
            )

    def _local_error(self, err: GatewayError) -> None:
        if err.status in (400, 501):
            self.keep_alive = False
        self.ctx.metrics.unrouted(err.status)
        self._local_answer(error_response(err, close=not self.keep_alive))

    def _local_answer(self, response: bytes) -> None:
        if self.phase == CLOSED:
            return
        self.transport.write(response)
        self._answered()

    def _fail(self, err: GatewayError, *, close: bool = False) -> None:
        """Answer a routed request with a gateway error (nothing of a replica's answer was sent)."""
        self._drop_upstream(abort=True)
        if close:
            self.keep_alive = False
        self._record(err.status)
        if self.phase != CLOSED:
            self.transport.write(error_response(err, close=not self.keep_alive))
            self._answered()

    def _record(self, status: int) -> None:
        svcm = self.svcm
        if svcm is not None:
            self.svcm = None
            svcm.finish(status, self.loop.time() - self.t0)

    def _answered(self) -> None:
        """The response is complete: next request, discard the rest of this one, or close."""
        self._clear_timer()
        if not self.keep_alive:
            self._close()
        elif self.req_done:
            self._next_request()
        else:
            self.phase = ANSWERED

    def _next_request(self) -> None:
        self.gen += 1
        self._reset()
        self.phase = IDLE
        if self.paused_by_stash:
            self.paused_by_stash = False
            stash, self.stash = self.stash, []
            self.loop.call_soon(self._feed_stash, stash, self.gen)

    def _feed_stash(self, stash: list[bytes], gen: int) -> None:
        if gen != self.gen or self.phase == CLOSED:
            return
        if not self.paused_by_upstream:
            self.transport.resume_reading()
        for data in stash:
            self.data_received(data)

    def _release_up(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.outstanding -= 1

    def _drop_upstream(self, *, abort: bool) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.client = None
            if abort:
                conn.abort()
        self._release_up()

    def _clear_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _abort(self, status: int) -> None:
        self._drop_upstream(abort=True)
        self._record(status)
        self._close()

    def _close(self) -> None:
        self.gen += 1
        self._clear_timer()
        self.phase = CLOSED
        self.transport.close()
