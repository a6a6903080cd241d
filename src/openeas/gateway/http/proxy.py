"""Owns the client side of the gateway: `ClientConnection`, the `asyncio.Protocol` that parses a
client's requests with httptools, authenticates and routes each one, streams it to a pooled
upstream connection and the answer back.

A client connection goes through named phases (`Phase`): IDLE (reading a request head) →
PROXYING (a replica serves the request) → ANSWERED (the answer is complete, the rest of the
request body is read and dropped) → IDLE for the next request, or CLOSED; a WebSocket handshake
(GET with ``Upgrade: websocket``) goes from PROXYING to TUNNEL once the replica answers 101: bytes
then go both ways unparsed until either side closes. The connection owns parsing,
the client socket, its one deadline, flow control (flow.py) and pipelining; each routed request's
replica side is its `Exchange` (exchange.py: route, attempts, upstream, resend buffer, split,
timer), made once per connection and reset per request. Objects the connection calls own the
rest: what all connections share (context.py), a service group's member and mirrored copies
(split.py, mirror.py), an async service's queue protocol (asyncq.py), header handling (head.py),
the gateway's own endpoints (local.py), limits and authorization (guard.py).

Pipelining: requests sent before the previous one was answered are kept (`FlowControl.keep_early`,
reading paused) and served in order after it, whether they came in a later read or in the same
read as the end of the previous one (the parser stops there; `guard.pipelined_end` finds where the
next request starts). Only when that read began inside a request is its start unknown: the
connection then closes after the answer and the client sends the rest again (HTTP/1.1 allows it).

Hot-path rules (see bench/RESULTS.md for what each bought): no framework objects, no per-request
task or logging; the request head is rebuilt once from the parsed headers, bodies and responses are
forwarded as bytes as they arrive; a task is created only to open a new upstream connection.
"""

from __future__ import annotations

import asyncio

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from openeas.gateway.asyncq.protocol import queue_body, queue_request
from openeas.gateway.auth import AuthError
from openeas.gateway.context import DEFAULT_COOLDOWN_S as DEFAULT_COOLDOWN_S  # re-exported for server.py
from openeas.gateway.context import NEVER
from openeas.gateway.context import ProxyContext as ProxyContext  # re-exported for server.py
from openeas.gateway.errors import GatewayError, body_too_large, error_response, rate_limited
from openeas.gateway.groups.split import route_group
from openeas.gateway.http.exchange import REPLAY_LIMIT_BYTES as REPLAY_LIMIT_BYTES  # re-exported for tests
from openeas.gateway.http.exchange import Exchange
from openeas.gateway.http.flow import FlowControl
from openeas.gateway.http.guard import (
    ANSWERED,
    BODY,
    CLOSED,
    HEAD,
    IDLE,
    KEEPALIVE,
    PROXYING,
    TUNNEL,
    UPGRADE_REFUSED,
    WAIT,
    Pipelined,
    authorize_request,
    headers_too_large,
    local_response,
    pipelined_end,
    too_many_connections,
    uri_too_long,
)
from openeas.gateway.http.guard import Phase as Phase  # re-exported for server.py and tests
from openeas.gateway.http.head import (
    AUTHORIZATION,
    CHUNKED_END_OF_HEAD,
    CONNECTION,
    CONTENT_LENGTH,
    CONTENT_MD5,
    CONTENT_TYPE,
    END_OF_HEAD,
    EXPLAIN,
    HEAD_METHOD,
    HOP_BY_HOP,
    LAST_CHUNK,
    TRANSFER_ENCODING,
    UPGRADE,
    WEBSOCKET,
    header_kind,
    upgrade_end,
    without_named,
)
from openeas.gateway.http.pool import UpstreamConnection
from openeas.gateway.routing.routes import RouteState


class ClientConnection(asyncio.Protocol):
    """One client's keep-alive connection; serves its requests one at a time."""

    # Slots, not an instance dict: attribute reads and writes are most of the per-request Python
    # work here; slots save ~7% of the instructions of a proxied request (bench/RESULTS.md).
    __slots__ = (
        "authorization",
        "chunked",
        "chunked_bytes",
        "connection",
        "content_length",
        "content_md5",
        "content_type",
        "ctx",
        "date",
        "deadline",
        "deadline_kind",
        "ex",
        "flow",
        "head_bytes",
        "header_budget",
        "header_room",
        "headers",
        "is_head",
        "keep_alive",
        "loop",
        "parser",
        "phase",
        "request_done",
        "request_seq",
        "transport",
        "upgrade",
        "url",
    )

    def __init__(self, ctx: ProxyContext, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ctx = ctx
        self.loop = loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = HttpRequestParser(self)
        self.flow = FlowControl()
        self.ex = Exchange(self, loop)  # the replica side of each request, reused
        # Bumped per request and on close: a timer or task of an earlier request checks it and
        # does nothing when it moved on.
        self.request_seq = -1
        self._next_request()

    def _next_request(self) -> None:
        """Forget the previous request (a fresh connection starts here too) and read the next one."""
        self.request_seq += 1
        self.phase = IDLE
        if self.flow.early is not None:  # its bytes came while the previous one was served
            self.loop.call_soon(self._feed_early, self.request_seq)
        # The request head, filled by the parser callbacks.
        self.url = b""
        self.headers: list[bytes] = [b""]  # the head for the replica; [0] becomes the request line
        self.authorization: bytes | None = None
        self.content_type: bytes | None = None
        self.content_md5: bytes | None = None
        self.date: bytes | None = None
        self.connection: bytes | None = None  # the Connection header's value
        self.upgrade: bytes | None = None  # the Upgrade header's value
        self.chunked = False
        self.content_length = 0  # bytes, from the header (chunked bodies: chunked_bytes)
        self.chunked_bytes = 0  # body bytes of a chunked request so far
        self.is_head = False
        self.keep_alive = True
        self.request_done = False  # the whole request (body included) was read
        self.ex.reset()
        # Limits on the head (see ProxyContext): bytes read, header lines and bytes still allowed.
        ctx = self.ctx
        self.head_bytes = 0
        self.header_room = ctx.max_headers
        self.header_budget = ctx.max_header_bytes
        # The connection's one deadline (loop time) and what it ends; `ProxyContext` sweeps
        # connections past it. Moving it is an attribute store: no timer per request or read.
        self.deadline_kind = KEEPALIVE
        self.deadline = self.loop.time() + ctx.keepalive_timeout_s

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.client = transport  # type: ignore[assignment]
        self.ex.attach(transport)  # type: ignore[arg-type]
        ctx = self.ctx
        if len(ctx.connections) + ctx.watches >= ctx.max_connections:
            self.refuse(too_many_connections(ctx.max_connections))
            return
        ctx.connections.add(self)
        ctx.metrics.connections += 1
        self.deadline_kind = HEAD  # a new connection must send its head within head_timeout_s
        self.deadline = self.loop.time() + ctx.head_timeout_s
        ctx.watch(self.loop)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        request_seq = self.request_seq
        head_before = self.head_bytes  # 0 when idle: this read starts a request
        if phase is IDLE:
            if self.deadline_kind is KEEPALIVE:  # the first bytes of the next request
                self.deadline_kind = HEAD
                self.deadline = self.loop.time() + self.ctx.head_timeout_s
            self.head_bytes += len(data)
        elif phase is CLOSED:
            return
        elif phase is TUNNEL:
            self.ex.upstream_conn.transport.write(data)  # type: ignore[union-attr]
            return
        elif self.deadline_kind is BODY:
            self.deadline = self.loop.time() + self.ctx.body_timeout_s
        if self.request_done and phase is not IDLE:
            self.flow.keep_early(data)  # the next request, before this one was answered
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            # A WebSocket handshake (others were refused in on_headers_complete): bytes after it
            # follow the head; the parser is done with this connection.
            tail = data[e.args[0] :]
            if tail and self.phase is PROXYING:
                self.flow.keep_early(tail)
        except HttpParserError as e:
            if isinstance(e.__context__, Pipelined):  # counted: the requests this read completed
                at_start = phase is IDLE and head_before == 0
                self._pipelined(data, self.request_seq - request_seq + 1 if at_start else 0)
            else:
                self._parse_failed(e)
            return
        if self.phase is IDLE and self.head_bytes > self.ctx.max_head_bytes:
            self.refuse(headers_too_large(self))  # one header line longer than all may be

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self.ctx.connections
        if self in connections:
            connections.remove(self)
            self.ctx.metrics.connections -= 1
        ex = self.ex
        if self.phase is PROXYING:
            ex.abandon()
            ex.record(499)  # client closed before the response completed (nginx's code)
        elif self.phase is TUNNEL:
            ex.drop_upstream()
        ex.cancel_timer()
        self.phase = CLOSED

    def pause_writing(self) -> None:
        conn = self.ex.upstream_conn
        self.flow.client_paused(conn.transport if conn is not None else None)

    def resume_writing(self) -> None:
        conn = self.ex.upstream_conn
        self.flow.client_resumed(conn.transport if conn is not None else None)

    # --- called by the exchange -------------------------------------------------------------------
    def replica_done(self, keep: bool, no_timer: bool) -> None:
        """The replica's answer ended; ``keep``: its connection stays open (else its "Connection:
        close" went to the client as is, and this connection closes too)."""
        if not keep:
            self.keep_alive = False
        if no_timer and self.keep_alive and self.request_done:
            self._next_request()  # the common case, without answered's checks
        else:
            self.answered()

    def tunnel(self, conn: UpstreamConnection) -> None:
        """The replica answered 101: bytes go both ways unparsed from now on."""
        self.phase = TUNNEL
        self.deadline = NEVER
        early = self.flow.take_early()  # frames the client sent before the 101
        if early:
            conn.transport.writelines(early)  # type: ignore[union-attr]
        self.flow.resume_client()

    def hand_over(self) -> None:
        """The connection leaves the proxy (a queue watch writes to its transport from now on)."""
        ctx = self.ctx
        if self in ctx.connections:
            ctx.connections.remove(self)
            ctx.metrics.connections -= 1
        self.request_seq += 1
        self.ex.cancel_timer()
        self.phase = CLOSED

    # --- httptools callbacks ------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self.phase is not IDLE:
            # A pipelined request in the same read: close after this response; the client resends.
            raise Pipelined
        url = self.url = self.url + url
        if len(url) > self.ctx.max_url_bytes:
            raise uri_too_long(self.ctx.max_url_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        room = self.header_room = self.header_room - 1
        budget = self.header_budget = self.header_budget - len(name) - len(value)
        if room < 0 or budget < 0:
            raise headers_too_large(self)
        kind = header_kind(name.lower())
        if kind is None:
            self.headers += (name, b": ", value, b"\r\n")
        elif kind == AUTHORIZATION:
            self.authorization = value
        elif kind == TRANSFER_ENCODING:
            self.chunked = True
        elif kind == CONNECTION:
            self.connection = value if self.connection is None else self.connection + b"," + value
        elif kind == UPGRADE:
            self.upgrade = value
        elif kind >= EXPLAIN:  # read for the balancer, and forwarded
            self.ex.note(kind, value)
            self.headers += (name, b": ", value, b"\r\n")
        elif kind != HOP_BY_HOP:
            if kind == CONTENT_LENGTH:
                self.content_length = int(value)  # llhttp accepted it: digits only
            elif kind == CONTENT_TYPE:
                self.content_type = value
            elif kind == CONTENT_MD5:
                self.content_md5 = value
            else:  # DATE
                self.date = value
            self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        now = self.loop.time()
        self.keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        ctx = self.ctx
        self.deadline_kind = BODY  # until on_message_complete: the body must keep coming
        self.deadline = now + ctx.body_timeout_s
        tunnel = parser.should_upgrade()  # CONNECT, or Connection: Upgrade
        if tunnel:
            if method != b"GET" or self.upgrade is None or self.upgrade.lower() != WEBSOCKET:
                self.refuse(GatewayError(*UPGRADE_REFUSED))  # before any routing: nothing sent
                return
            # A WebSocket handshake. Whatever the replica answers, the client's stream is no
            # longer HTTP: a tunnel after a 101, else the connection closes after the answer.
            self.keep_alive = False
        if self.connection is not None:
            self.headers = without_named(self.headers, self.connection)
        url = self.url
        target = ctx.targets.get(url) or ctx.resolve(url)
        if target is None:
            try:
                self._local_answer(local_response(self, method))
            except GatewayError as e:
                self.local_error(e)
            return
        service, upstream_path = target
        route = ctx.routes.get(service)
        if route is None:
            route = route_group(self, service)  # a service group, or a 404 (split.py)
            if route is None:
                return
        self.phase = PROXYING
        ex = self.ex
        service_metrics = ex.start(route, now)
        if service_metrics.in_flight >= service_metrics.push_at and ctx.on_jump is not None:
            ctx.on_jump(route.service)  # the control plane hears of it at once (gateway/telemetry/stats.py)
        creds = route.creds
        auth = self.authorization
        if creds is not None and not creds.fast_match(auth) and not self._authorize(route, method):
            return
        if route.balancer is None:
            self.fail(GatewayError(500, "invalid_balancer", route.balancer_error or "invalid balancer"))
            return
        limiter = route.limiter
        if limiter is not None:
            wait = limiter.take(now)
            if wait:
                self.fail(rate_limited(route.service, limiter.rate, wait))
                return
        if self.content_length > route.max_body_bytes:
            self.fail(body_too_large(route.max_body_bytes, route.service), close=True)
            return
        if route.queue is not None:  # an async service: its queue answers (asyncq.py)
            queue_request(ex, method, upstream_path)
            return
        self._proxy(ex, route, method, upstream_path, tunnel, now)

    def _proxy(
        self, ex: Exchange, route: RouteState, method: bytes, upstream_path: bytes, tunnel: bool, now: float
    ) -> None:
        """The request goes to a replica: its head now (or once a signed body checks out)."""
        headers = self.headers
        headers[0] = method + b" " + upstream_path + b" HTTP/1.1\r\n"  # the request line
        if tunnel:
            headers.append(upgrade_end(self.upgrade))  # type: ignore[arg-type]
        else:
            headers.append(CHUNKED_END_OF_HEAD if self.chunked else END_OF_HEAD)
        ex.waiting = [b"".join(headers)]
        if route.timeout_s is not None:
            ex.arm(route.timeout_s, self.request_seq)
        self.is_head = method == HEAD_METHOD
        if route.balancer.wants_key and not tunnel:  # type: ignore[union-attr]
            ex.key_body = bytearray()  # sent once the key's bytes are read (affinity.py)
        elif ex.signed_body is None:  # else sent once the body's Content-MD5 checks out
            ex.dispatch(now)

    def on_body(self, data: bytes) -> None:
        if self.phase is not PROXYING:
            return  # answered already: discard
        ex = self.ex
        if ex.split is not None:
            ex.split.feed(data)  # a copy for the group's mirrors, if any
        if ex.signed_body is not None:
            ex.signed_body.parts.append(data)
        elif ex.key_body is not None and ex.keyed(data):
            ex.dispatch(self.loop.time())
        if self.chunked:
            self.chunked_bytes += len(data)
            route = ex.route
            assert route is not None
            if self.chunked_bytes > route.max_body_bytes:
                self.fail(body_too_large(route.max_body_bytes, route.service), close=True)
                return
            ex.send(b"%x\r\n" % len(data))
            ex.send(data)
            ex.send(b"\r\n")
        else:
            ex.send(data)

    def on_message_complete(self) -> None:
        self.request_done = True
        self.deadline_kind = WAIT
        self.deadline = NEVER
        phase = self.phase
        if phase is PROXYING:
            ex = self.ex
            if ex.queued is not None:
                queue_body(ex, self.chunked)
                return
            if self.chunked:
                ex.send(LAST_CHUNK)
            signed = ex.take_signed()
            if ex.key_body is not None and signed is None:
                ex.key_done = True
                ex.dispatch(self.loop.time())
            if signed is not None:
                try:
                    signed.verify()
                except AuthError as e:
                    self.fail(e)
                    return
                ex.dispatch(self.loop.time())
            if ex.split is not None and self.phase is PROXYING:
                ex.split.complete(self.headers, self.chunked, self.is_head, self.loop)  # copies go now
        elif phase is ANSWERED:
            self._next_request()

    # --- answers from the gateway itself --------------------------------------------------------
    def _local_answer(self, response: bytes) -> None:
        if self.phase is CLOSED:
            return
        self.transport.write(response)
        self.answered()

    def local_error(self, err: GatewayError) -> None:
        """Answer an unrouted request with ``err``."""
        if err.status in (400, 408, 414, 431, 501):
            self.keep_alive = False  # the rest of the stream cannot be trusted
        self.ctx.metrics.unrouted(err.status)
        self._local_answer(error_response(err, close=not self.keep_alive))

    def refuse(self, err: GatewayError) -> None:
        """Answer ``err`` before anything was routed, count it by its code, and close."""
        self.ctx.metrics.reject(err.code)
        self.keep_alive = False
        self.local_error(err)

    def _authorize(self, route: RouteState, method: bytes) -> bool:
        """The slow auth path (signed requests, refusals); False when the request was answered."""
        try:
            expected_md5 = authorize_request(self, route, method)
        except AuthError as e:
            self.fail(e)
            return False
        if expected_md5 is not None:
            self.ex.signed(expected_md5)
        return True

    def fail(self, err: GatewayError, *, close: bool = False) -> None:
        """Answer a routed request with a gateway error (nothing of a replica's answer was sent)."""
        ex = self.ex
        ex.drop_upstream()
        if close:
            self.keep_alive = False
        ex.record(err.status)
        if self.phase is not CLOSED:
            ex.transport.write(error_response(err, close=not self.keep_alive))
            self.answered()

    def answered(self) -> None:
        """The response is complete: next request, discard the rest of this one, or close."""
        self.ex.clear_timer()
        if not self.keep_alive:
            self.close()
        elif self.request_done:
            self._next_request()
        else:
            self.phase = ANSWERED

    # --- rare paths: pipelining, a request that does not parse, the deadline ---------------------
    def _pipelined(self, data: bytes, requests: int) -> None:
        """A read held the end of the request being served and the start of the next one: the rest
        of the read is kept and parsed once this request is answered, or the connection closes
        after this answer when the next request's start is unknown (guard.pipelined_end)."""
        end = pipelined_end(data, requests)
        if end is None:
            self.keep_alive = False
            return
        self.parser = HttpRequestParser(self)  # the old one stopped in the next request's head
        self.flow.keep_early(data[end:])

    def _parse_failed(self, e: HttpParserError) -> None:
        """The parser stopped on ``e``: a limit a callback raised, or bytes that are not HTTP."""
        cause = e.__context__
        phase = self.phase
        if isinstance(cause, GatewayError):  # a limit, raised by a parser callback
            if phase is IDLE:
                self.refuse(cause)
            return
        err = GatewayError(400, "bad_request", f"malformed HTTP request: {e}")
        if phase is IDLE:
            self.local_error(err)
        elif phase is PROXYING and not self.ex.answer_started():
            self.fail(err, close=True)  # a body that does not parse: nothing was answered yet
        else:  # the replica's answer already started, or was complete: all that is left is to close
            self._cut(400)

    def expire(self) -> None:
        """The connection's deadline passed (called by the context's sweep)."""
        kind = self.deadline_kind
        self.deadline = NEVER
        ctx = self.ctx
        ctx.metrics.timed_out(kind)
        phase = self.phase
        if kind is HEAD and phase is IDLE:
            message = f"request head not complete within {ctx.head_timeout_s:g} s (head_timeout_s)"
            self.local_error(GatewayError(408, "head_timeout", message))
        elif kind is BODY and phase is PROXYING and not self.ex.answer_started():
            message = f"request body stalled for {ctx.body_timeout_s:g} s (body_timeout_s)"
            self.fail(GatewayError(408, "body_timeout", message), close=True)
        else:  # idle keep-alive, or a stalled body whose answer already started
            self._cut(408)

    def _cut(self, status: int) -> None:
        self.ex.drop_upstream()
        self.ex.record(status)
        self.close()

    def _feed_early(self, request_seq: int) -> None:
        if request_seq != self.request_seq or self.phase is CLOSED:
            return
        early = self.flow.take_early()
        self.flow.resume_client()
        for data in early or ():
            self.data_received(data)

    def close(self) -> None:
        self.request_seq += 1
        self.ex.cancel_timer()
        self.deadline = NEVER  # the sweep leaves it alone until connection_lost removes it
        self.phase = CLOSED
        self.transport.close()
