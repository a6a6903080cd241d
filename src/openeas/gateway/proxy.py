"""Owns the client side of the gateway: `ClientConnection`, the `asyncio.Protocol` that parses a
client's requests with httptools, authenticates and routes each one, streams it to a pooled
upstream connection and the answer back.

A client connection goes through named phases (`Phase`): IDLE (reading a request head) →
PROXYING (a replica serves the request) → ANSWERED (the answer is complete, the rest of the
request body is read and dropped) → IDLE for the next request, or CLOSED; a WebSocket handshake
(GET with ``Upgrade: websocket``) goes from PROXYING to TUNNEL once the replica answers 101: bytes
then go both ways unparsed until either side closes. Helpers elsewhere own the rest: what all
connections share (context.py), flow control (flow.py), what to do when a replica fails a request
(retry.py decides, failover.py acts), header handling (head.py), the gateway's own endpoints
(local.py), the replica side (pool.py), limits, deadlines, refusals and other rare paths
(guard.py).

Pipelining: requests sent before the previous one was answered are kept (`FlowControl.keep_early`,
reading paused) and served in order after it, whether they came in a later read or in the same
read as the end of the previous one (the parser stops there; `guard.pipelined` finds where the
next request starts). Only when that read began inside a request is its start unknown: the
connection then closes after the answer and the client sends the rest again (HTTP/1.1 allows it).

Hot-path rules (see bench/RESULTS.md for what each bought): no framework objects, no per-request
task or logging; the request head is rebuilt once from the parsed headers, bodies and responses are
forwarded as bytes as they arrive; a task is created only to open a new upstream connection.
"""

from __future__ import annotations

import asyncio

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from openeas.gateway.activator import ABANDONED, ENDED, RELEASED, hold, resume, unhold
from openeas.gateway.asyncq import Pending, queue_body_done, queue_request
from openeas.gateway.auth import AuthError, SignedBody
from openeas.gateway.context import DEFAULT_COOLDOWN_S as DEFAULT_COOLDOWN_S  # re-exported for server.py
from openeas.gateway.context import NEVER
from openeas.gateway.context import ProxyContext as ProxyContext  # re-exported for server.py
from openeas.gateway.errors import GatewayError, body_too_large, error_response, rate_limited
from openeas.gateway.failover import attempts_of, connect, on_timeout, resend
from openeas.gateway.flow import FlowControl
from openeas.gateway.guard import (
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
    answer_locally,
    authorize_request,
    expire,
    headers_too_large,
    local_error,
    parse_failed,
    pipelined,
    refuse,
    too_many_connections,
    upstream_upgraded,
    uri_too_long,
)
from openeas.gateway.guard import Phase as Phase  # re-exported for server.py and tests
from openeas.gateway.head import (
    AUTHORIZATION,
    CHUNKED_END_OF_HEAD,
    CONNECTION,
    CONTENT_LENGTH,
    CONTENT_MD5,
    CONTENT_TYPE,
    END_OF_HEAD,
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
from openeas.gateway.metrics import ServiceMetrics
from openeas.gateway.mirror import LiveOnly, Split
from openeas.gateway.pool import UpstreamConnection, UpstreamState
from openeas.gateway.retry import AfterLoss, Attempts, after_loss, unanswered
from openeas.gateway.routes import RouteState
from openeas.gateway.split import route_group

REPLAY_LIMIT_BYTES = 1024 * 1024  # request bytes kept to resend on another replica


class ClientConnection(asyncio.Protocol):
    """One client's keep-alive connection; serves its requests one at a time."""

    # Slots, not an instance dict: attribute reads and writes are most of the per-request Python
    # work here; slots save ~7% of the instructions of a proxied request (bench/RESULTS.md).
    __slots__ = (
        "attempts",
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
        "queued",
        "request_done",
        "request_seq",
        "resendable",
        "route",
        "sent_bytes",
        "service_metrics",
        "signed_body",
        "split",
        "started",
        "timer",
        "transport",
        "upgrade",
        "upstream",
        "upstream_conn",
        "url",
        "waiting",
    )

    def __init__(self, ctx: ProxyContext, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ctx = ctx
        self.loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = HttpRequestParser(self)
        self.flow = FlowControl()
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
        self.is_head = False
        self.keep_alive = True
        self.request_done = False  # the whole request (body included) was read
        self.queued: Pending | None = None  # an async request waiting for its body
        # Serving it.
        self.route: RouteState | None = None
        self.service_metrics: ServiceMetrics | None = None  # None once the outcome is recorded
        self.upstream: UpstreamState | None = None  # the replica counting this request as outstanding
        self.upstream_conn: UpstreamConnection | None = None
        self.waiting: list[bytes] | None = None  # request bytes waiting for a connection
        self.resendable: list[bytes] | None = None  # bytes written so far, kept to resend; None: too many
        self.sent_bytes = 0  # request bytes written to upstream_conn
        self.chunked_bytes = 0  # body bytes of a chunked request so far
        self.signed_body: SignedBody | None = None  # signed request: body kept until its md5 checks out
        self.attempts: Attempts | None = None  # made on the first failure or hold
        self.timer: asyncio.TimerHandle | None = None  # the route's timeout (408)
        self.split: Split | LiveOnly | None = None  # a service group's request: member, mirrored copies
        self.started = 0.0  # loop time (s) the head was complete
        # Limits on the head (see ProxyContext): bytes read, header lines and bytes still allowed.
        ctx = self.ctx
        self.head_bytes = 0
        self.header_room = ctx.max_headers
        self.header_budget = ctx.max_header_bytes
        # The connection's one deadline (loop time) and what it ends; `ProxyContext` sweeps
        # connections past it. Moving it is an attribute store: no timer per request or read.
        self.deadline_kind = KEEPALIVE
        self.deadline = self.loop.time() + ctx.keepalive_timeout_s

    # Rare paths: limits, deadlines, unparsable requests (guard.py); replica failures (failover.py).
    _connect = connect
    _resend = resend
    _attempts = attempts_of
    _hold = hold
    _queue_request = queue_request  # async services (asyncq.py)
    _queue_body_done = queue_body_done
    _resume = resume
    _unhold = unhold
    _on_timeout = on_timeout
    _route_group = route_group
    _refuse = refuse
    _authorize = authorize_request
    _local = answer_locally
    _local_error = local_error
    upstream_upgraded = upstream_upgraded
    _pipelined = pipelined
    _parse_failed = parse_failed
    expire = expire

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.client = transport  # type: ignore[assignment]
        ctx = self.ctx
        if len(ctx.connections) + ctx.watches >= ctx.max_connections:
            self._refuse(too_many_connections(ctx.max_connections))
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
            self.upstream_conn.transport.write(data)  # type: ignore[union-attr]
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
            self._refuse(headers_too_large(self))  # one header line longer than all may be

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self.ctx.connections
        if self in connections:
            connections.remove(self)
            self.ctx.metrics.connections -= 1
        if self.phase is PROXYING:
            if self.attempts is not None:
                self._unhold(ABANDONED)  # if it was held: the client gave up waiting
            self._drop_upstream()
            self._record(499)  # client closed before the response completed (nginx's code)
        elif self.phase is TUNNEL:
            self._drop_upstream()
        self._clear_timer()
        self.phase = CLOSED

    def pause_writing(self) -> None:
        conn = self.upstream_conn
        self.flow.client_paused(conn.transport if conn is not None else None)

    def resume_writing(self) -> None:
        conn = self.upstream_conn
        self.flow.client_resumed(conn.transport if conn is not None else None)

    # --- Downstream (called by UpstreamConnection) ----------------------------------------------
    def upstream_pause(self) -> None:
        self.flow.upstream_paused()

    def upstream_resume(self) -> None:
        self.flow.upstream_resumed()

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        """The replica's answer ended (all of it already went to the client)."""
        if conn is not self.upstream_conn:
            return
        self.upstream_conn = None
        conn.client = None
        upstream = self.upstream
        self.upstream = None
        assert upstream is not None  # set whenever upstream_conn is
        upstream.outstanding -= 1
        flow = self.flow
        keep = conn.keep_alive
        if keep and self.request_done:
            conn.earlier_request_bytes += self.sent_bytes
            if flow.client_full:
                flow.detach(conn.transport)  # type: ignore[arg-type]
            upstream.release(conn)
        else:
            conn.close()  # the replica said close, or answered before reading the whole body
        if not keep:
            self.keep_alive = False  # the replica's "Connection: close" went to the client as is
        if flow.upstream_full:
            flow.upstream_resumed()
        self._record(conn.status)
        if self.timer is None and self.keep_alive and self.request_done:
            self._next_request()  # the common case, without _answered's checks
        else:
            self._answered()

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None:
        """The replica's connection closed before its answer ended (or ended its tunnel)."""
        if conn is not self.upstream_conn:
            return
        if self.phase is TUNNEL:
            self.upstream_conn = None
            self._close()
            return
        if self.phase is not PROXYING:
            return
        self.upstream_conn = None
        failed = self.upstream
        assert failed is not None and self.route is not None
        self._release_upstream()
        self.flow.upstream_resumed()  # its full buffer went with it
        action = after_loss(
            answer_started=conn.got_bytes,
            resendable=self.resendable is not None,
            resend_unanswered=self.route.resend_unanswered,
            acknowledged=None if conn.got_bytes else conn.request_acknowledged(),
        )
        if action is AfterLoss.CUT:
            # Part of the answer already went to the client: all we can do is end the connection.
            self._record(502)
            self._close()
        elif action is AfterLoss.FAIL:
            not_resent = not self.route.resend_unanswered and self.resendable is not None
            self._fail(unanswered(reason, self.route.service, not_resent=not_resent))
        else:
            assert self.resendable is not None
            self.waiting = self.resendable
            self.resendable = None
            self._resend(failed, reason, stale=conn.reused, connect_failed=False)

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
        self.started = now = self.loop.time()
        self.keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        ctx = self.ctx
        self.deadline_kind = BODY  # until on_message_complete: the body must keep coming
        self.deadline = now + ctx.body_timeout_s
        tunnel = parser.should_upgrade()  # CONNECT, or Connection: Upgrade
        if tunnel:
            if method != b"GET" or self.upgrade is None or self.upgrade.lower() != WEBSOCKET:
                self._refuse(GatewayError(*UPGRADE_REFUSED))  # before any routing: nothing sent
                return
            # A WebSocket handshake. Whatever the replica answers, the client's stream is no
            # longer HTTP: a tunnel after a 101, else the connection closes after the answer.
            self.keep_alive = False
        if self.connection is not None:
            self.headers = without_named(self.headers, self.connection)
        url = self.url
        target = ctx.targets.get(url) or ctx.resolve(url)
        if target is None:
            self._local(method)
            return
        service, upstream_path = target
        route = ctx.routes.get(service)
        if route is None:
            route = self._route_group(service)  # a service group, or a 404 (split.py)
            if route is None:
                return
        self.route = route
        service_metrics = self.service_metrics = route.metrics
        service_metrics.in_flight += 1
        if service_metrics.in_flight >= service_metrics.push_at and ctx.on_jump is not None:
            ctx.on_jump(route.service)  # the control plane hears of the jump at once (gateway/stats.py)
        self.phase = PROXYING
        creds = route.creds
        if creds is not None and not creds.fast_match(self.authorization) and not self._authorize(method):
            return
        if route.balancer is None:
            self._fail(GatewayError(500, "invalid_balancer", route.balancer_error or "invalid balancer"))
            return
        limiter = route.limiter
        if limiter is not None:
            wait = limiter.take(now)
            if wait:
                self._fail(rate_limited(route.service, limiter.rate, wait))
                return
        if self.content_length > route.max_body_bytes:
            self._fail(body_too_large(route.max_body_bytes, route.service), close=True)
            return
        if route.queue is not None:  # an async service: its queue answers (asyncq.py)
            self._queue_request(method, upstream_path)
            return
        headers = self.headers
        headers[0] = method + b" " + upstream_path + b" HTTP/1.1\r\n"  # the request line
        if tunnel:
            headers.append(upgrade_end(self.upgrade))  # type: ignore[arg-type]
        else:
            headers.append(CHUNKED_END_OF_HEAD if self.chunked else END_OF_HEAD)
        self.waiting = [b"".join(headers)]
        if route.timeout_s is not None:
            self.timer = self.loop.call_later(route.timeout_s, self._on_timeout, self.request_seq)
        self.is_head = method == HEAD_METHOD
        if self.signed_body is None:  # else sent once the body's Content-MD5 checks out
            self._dispatch(now)

    def on_body(self, data: bytes) -> None:
        if self.phase is not PROXYING:
            return  # answered already: discard
        if self.split is not None:
            self.split.feed(data)  # a copy for the group's mirrors, if any
        if self.signed_body is not None:
            self.signed_body.parts.append(data)
        if self.chunked:
            self.chunked_bytes += len(data)
            route = self.route
            assert route is not None
            if self.chunked_bytes > route.max_body_bytes:
                self._fail(body_too_large(route.max_body_bytes, route.service), close=True)
                return
            self._send(b"%x\r\n" % len(data))
            self._send(data)
            self._send(b"\r\n")
        else:
            self._send(data)

    def on_message_complete(self) -> None:
        self.request_done = True
        self.deadline_kind = WAIT
        self.deadline = NEVER
        phase = self.phase
        if phase is PROXYING:
            if self.queued is not None:
                self._queue_body_done()
                return
            if self.chunked:
                self._send(LAST_CHUNK)
            signed = self.signed_body
            if signed is not None:
                self.signed_body = None
                try:
                    signed.verify()
                except AuthError as e:
                    self._fail(e)
                    return
                self._dispatch(self.loop.time())
            if self.split is not None and self.phase is PROXYING:
                self.split.complete(self)  # mirrored copies go now
        elif phase is ANSWERED:
            self._next_request()

    # --- request flow ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """Request bytes after the head: to the replica, or kept until a connection is there."""
        waiting = self.waiting
        if waiting is not None:
            waiting.append(data)
            return
        conn = self.upstream_conn
        if conn is None:
            return  # the replica's answer ended or failed; the rest of the body has nowhere to go
        conn.transport.write(data)  # type: ignore[union-attr]
        sent = self.sent_bytes = self.sent_bytes + len(data)
        resendable = self.resendable
        if resendable is not None:
            if sent > REPLAY_LIMIT_BYTES:
                self.resendable = None
            else:
                resendable.append(data)

    def _dispatch(self, now: float) -> None:
        """Send the waiting request to the replica the balancer picks, or hold it when none is."""
        route = self.route
        assert route is not None and route.balancer is not None
        attempts = self.attempts
        upstreams = route.upstreams
        i = route.balancer.pick(upstreams, now, attempts.tried if attempts is not None else ())
        if i >= 0:
            self._send_to(upstreams[i])
        else:
            self._hold(
                GatewayError(503, "no_ready_replica", f"service '{route.service}' has no ready replica")
            )

    def _send_to(
        self, upstream: UpstreamState, new_conn: UpstreamConnection | None = None, fresh: bool = False
    ) -> None:
        """Write the waiting request to ``upstream``: over ``new_conn`` when `_connect` just opened
        it for this request, else over the replica's most recently used idle connection (the
        common case: one write, no task), else over a connection opened now (``fresh`` forces it).
        """
        conn = new_conn
        if conn is None:
            self.upstream = upstream
            upstream.outstanding += 1
            idle = upstream.idle
            if idle and not fresh:
                conn = idle.pop()  # most recent: warm, least likely timed out by the replica
                if conn.closed:
                    conn = upstream.pop_idle()
            if conn is None:
                self.loop.create_task(self._connect(upstream, self.request_seq))
                return
        conn.client = self
        conn.reused = new_conn is None
        conn.got_bytes = False
        if self.is_head:
            conn.expect_head_response()
        self.upstream_conn = conn
        if self.attempts is not None:  # rare: a failed try or a hold came first
            self._unhold(RELEASED)  # if it was held: released, now that a replica takes it
        transport = conn.transport
        assert transport is not None
        if self.flow.client_full:
            self.flow.attach(transport)
        waiting = self.waiting
        assert waiting is not None
        self.waiting = None
        if len(waiting) == 1:  # the head is the whole request so far: one write, no size sum
            data = waiting[0]
            transport.write(data)
            self.sent_bytes = len(data)
            self.resendable = waiting
            return
        transport.writelines(waiting)
        size = sum(map(len, waiting))
        self.sent_bytes = size
        self.resendable = waiting if size <= REPLAY_LIMIT_BYTES else None

    # --- answers from the gateway itself --------------------------------------------------------
    def _local_answer(self, response: bytes) -> None:
        if self.phase is CLOSED:
            return
        self.transport.write(response)
        self._answered()

    def _fail(self, err: GatewayError, *, close: bool = False) -> None:
        """Answer a routed request with a gateway error (nothing of a replica's answer was sent)."""
        self._drop_upstream()
        if close:
            self.keep_alive = False
        self._record(err.status)
        if self.phase is not CLOSED:
            self.transport.write(error_response(err, close=not self.keep_alive))
            self._answered()

    def _record(self, status: int) -> None:
        """Count the request's outcome, once."""
        service_metrics = self.service_metrics
        if service_metrics is not None:
            self.service_metrics = None
            seconds = self.loop.time() - self.started
            service_metrics.finish(status, seconds)
            if self.split is not None:
                self.split.done(self, status, seconds)

    def _answered(self) -> None:
        """The response is complete: next request, discard the rest of this one, or close."""
        self._clear_timer()
        if not self.keep_alive:
            self._close()
        elif self.request_done:
            self._next_request()
        else:
            self.phase = ANSWERED

    def _feed_early(self, request_seq: int) -> None:
        if request_seq != self.request_seq or self.phase is CLOSED:
            return
        early = self.flow.take_early()
        self.flow.resume_client()
        for data in early or ():
            self.data_received(data)

    def _release_upstream(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.outstanding -= 1

    def _drop_upstream(self) -> None:
        """Abandon the replica connection (aborted: its answer, if any, is no longer wanted), or
        the request's place in a hold queue (answered while held)."""
        if self.attempts is not None:
            self._unhold(ENDED)
        conn = self.upstream_conn
        if conn is not None:
            self.upstream_conn = None
            conn.client = None
            conn.abort()
        self._release_upstream()

    def _clear_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self) -> None:
        self.request_seq += 1
        self._clear_timer()
        self.deadline = NEVER  # the sweep leaves it alone until connection_lost removes it
        self.phase = CLOSED
        self.transport.close()
