"""Owns one request's exchange with replicas: `Exchange`, the replica side of a client connection.

The client connection (`openeas.gateway.http.proxy.ClientConnection`) parses requests and owns the
client socket, its flow control, deadline and pipelining; for each routed request it fills its
one `Exchange` (made with the connection, reset per request: nothing is allocated per request)
and the exchange does the rest: the route and its metrics, the replica the balancer picks, the
upstream connection and the request bytes kept to resend (`REPLAY_LIMIT_BYTES`), the attempts
after a failure (retry.py decides), the hold queue (activator.py), the route's timeout, a group
request's split (mirror.py) and an async request waiting for its body (asyncq.py).

The exchange is the `pool.Downstream` of the upstream connection serving it: the replica's answer
goes to ``transport`` (the client's, or a `mirror.Capture` around it while a mirrored request is
served), and the pool's calls end here. It calls back into its connection only through the
connection's methods (`answered`, `fail`, `replica_done`, `tunnel`, `close`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from openeas.gateway.auth import SignedBody
from openeas.gateway.errors import GatewayError
from openeas.gateway.http.activator import ABANDONED, ENDED, RELEASED, hold, unhold
from openeas.gateway.http.guard import PROXYING, TUNNEL
from openeas.gateway.http.head import EXPLAIN
from openeas.gateway.http.pool import UpstreamConnection, UpstreamState
from openeas.gateway.http.retry import AfterLoss, Attempts, NextAttempt, after_loss, next_attempt, unanswered
from openeas.gateway.routing.affinity import PREFIX_BODY_BYTES, explain_line, prefix_key, session_key
from openeas.gateway.routing.balancers import SESSION

if TYPE_CHECKING:
    from openeas.gateway.asyncq.protocol import Pending
    from openeas.gateway.groups.mirror import LiveOnly, Split
    from openeas.gateway.http.proxy import ClientConnection
    from openeas.gateway.routing.routes import RouteState
    from openeas.gateway.telemetry.metrics import ServiceMetrics

REPLAY_LIMIT_BYTES = 1024 * 1024  # request bytes kept to resend on another replica


class Exchange:
    """The replica side of one client connection's current request."""

    __slots__ = (
        "attempts",
        "client",
        "due",
        "due_seq",
        "explain",
        "explain_line",
        "key_body",
        "key_done",
        "loop",
        "member_header",
        "queued",
        "resendable",
        "route",
        "sent_bytes",
        "service_metrics",
        "session",
        "signed_body",
        "split",
        "started",
        "timer",
        "timer_at",
        "transport",
        "upstream",
        "upstream_conn",
        "waiting",
    )

    def __init__(self, client: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by attach
        # The route timeouts' lazy timer (`arm`), kept across the connection's requests.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # loop time (s) it fires
        self.due_seq = -1  # the request `due` is for
        self.reset()

    def attach(self, transport: asyncio.Transport) -> None:
        """The client's transport: where answers go."""
        self.transport = transport

    def divert(self, transport: asyncio.Transport) -> None:
        """Answers go to ``transport`` (a mirrored request's `Capture` around the client's) until
        diverted back."""
        self.transport = transport

    def reset(self) -> None:
        """Forget the previous request."""
        self.route: RouteState | None = None
        self.service_metrics: ServiceMetrics | None = None  # None once the outcome is recorded
        self.upstream: UpstreamState | None = None  # the replica counting this request as outstanding
        self.upstream_conn: UpstreamConnection | None = None
        self.waiting: list[bytes] | None = None  # request bytes waiting for a connection
        self.resendable: list[bytes] | None = None  # bytes written so far, kept to resend; None: too many
        self.sent_bytes = 0  # request bytes written to upstream_conn
        self.signed_body: SignedBody | None = None  # signed request: body kept until its md5 checks out
        self.attempts: Attempts | None = None  # made on the first failure or hold
        self.due = 0.0  # loop time (s) this request's route timeout ends (408); 0: none armed
        self.split: Split | LiveOnly | None = None  # a service group's request: member, mirrored copies
        self.member_header: bytes | None = None  # a group's request: X-OpenEAS-Member for its answer
        self.queued: Pending | None = None  # an async request waiting for its body
        self.started = 0.0  # loop time (s) the head was complete
        # Affinity (balancers that want a key): the body's first bytes, read before the pick.
        self.key_body: bytearray | None = None  # None: not collecting (or the pick was made)
        self.key_done = False  # the whole body is in key_body
        self.session: bytes | None = None  # the X-OpenEAS-Session header
        self.explain = False  # X-OpenEAS-Explain: 1 asked why this replica
        self.explain_line: bytes | None = None  # the X-OpenEAS-Replica line for the answer

    # --- set by the request's route -------------------------------------------------------------
    def start(self, route: RouteState, now: float) -> ServiceMetrics:
        self.route = route
        self.started = now
        metrics = self.service_metrics = route.metrics
        metrics.in_flight += 1
        return metrics

    def member(self, split: Split | LiveOnly, header: bytes) -> None:
        """A group's request: its member's split state and answer header."""
        self.split = split
        self.member_header = header

    def signed(self, expected_md5: bytes | str) -> None:
        """Keep the body until its Content-MD5 checks out (signed requests)."""
        self.signed_body = SignedBody(expected_md5)  # type: ignore[arg-type]

    def take_signed(self) -> SignedBody | None:
        signed = self.signed_body
        self.signed_body = None
        return signed

    def wait_body(self, pending: Pending) -> None:
        """An async request: its body collects in ``waiting`` instead of going to a replica."""
        self.queued = pending
        self.waiting = []

    def take_body(self, chunked: bool) -> tuple[Pending, bytes]:
        """The async request's pending state and its whole body (de-chunked)."""
        pending = self.queued
        assert pending is not None
        self.queued = None
        waiting = self.waiting or []
        self.waiting = None
        # A chunked body was framed for a replica as it came: [size line, data, CRLF] per chunk.
        return pending, b"".join(waiting[1::3] if chunked else waiting)

    def arm(self, timeout_s: float, request_seq: int) -> None:
        """The route's timeout for this request. One lazy timer per connection, not one per
        request: a request answered in time only clears ``due``; the timer, when it fires for a
        later request, waits again for that one's ``due`` (bench/RESULTS.md: a timer made and
        cancelled per request cost more than the rest of the Python path)."""
        now = self.loop.time()
        due = self.due = now + timeout_s
        self.due_seq = request_seq
        if self.timer is None or self.timer_at > due:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = due
            self.timer = self.loop.call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.timer = None
        due = self.due
        if not due:
            return  # the request it was armed for was answered; none armed since
        now = self.loop.time()
        if now < due:  # armed for a later request of the connection: wait for its due
            self.timer_at = due
            self.timer = self.loop.call_later(due - now, self._expire)
            return
        self.due = 0.0
        self.on_timeout(self.due_seq)

    # --- affinity -------------------------------------------------------------------------------
    def note(self, kind: int, value: bytes) -> None:
        """A header the balancer reads: X-OpenEAS-Explain or X-OpenEAS-Session."""
        if kind == EXPLAIN:
            self.explain = value.strip() == b"1"
        else:
            self.session = value.strip()

    def keyed(self, data: bytes) -> bool:
        """Body bytes for the key; True once enough are read to pick (`PREFIX_BODY_BYTES`)."""
        body = self.key_body
        assert body is not None
        body += data[: PREFIX_BODY_BYTES - len(body)]
        return len(body) >= PREFIX_BODY_BYTES

    def take_key(self, wants: str) -> bytes | None:
        body = self.key_body
        self.key_body = None
        if body is None:
            return self.session if wants == SESSION else None
        data = bytes(body)
        if wants == SESSION:
            return session_key(self.session, data, self.key_done)
        return prefix_key(data, self.key_done)

    # --- request bytes ----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
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

    def dispatch(self, now: float) -> None:
        """Send the waiting request to the replica the balancer picks, or hold it when none is."""
        route = self.route
        assert route is not None and route.balancer is not None
        attempts = self.attempts
        upstreams = route.upstreams
        balancer = route.balancer
        wants = balancer.wants_key
        key = self.take_key(wants) if wants else None
        i = balancer.pick(upstreams, now, attempts.tried if attempts is not None else (), key)
        if i >= 0:
            self.client.ctx.metrics.picked(route.route.balancer, balancer.outcome)
            if self.explain:
                self.explain_line = explain_line(upstreams[i].upstream.replica_id, balancer.reason)
            self.send_to(upstreams[i])
        else:
            message = f"service '{route.service}' has no ready replica"
            hold(self, GatewayError(503, "no_ready_replica", message))

    def send_to(
        self, upstream: UpstreamState, new_conn: UpstreamConnection | None = None, fresh: bool = False
    ) -> None:
        """Write the waiting request to ``upstream``: over ``new_conn`` when `connect` just opened
        it for this request, else over the replica's most recently used idle connection (the
        common case: one write, no task), else over a connection opened now (``fresh`` forces it).
        """
        conn = new_conn
        client = self.client
        if conn is None:
            self.upstream = upstream
            upstream.outstanding += 1
            idle = upstream.idle
            if idle and not fresh:
                conn = idle.pop()  # most recent: warm, least likely timed out by the replica
                if conn.closed:
                    conn = upstream.pop_idle()
            if conn is None:
                self.loop.create_task(self.connect(upstream, client.request_seq))
                return
        conn.client = self
        conn.reused = new_conn is None
        conn.got_bytes = False
        conn.inject = self.member_header
        if self.explain_line is not None:
            conn.inject = (conn.inject or b"") + self.explain_line
        if client.is_head:
            conn.expect_head_response()
        self.upstream_conn = conn
        if self.attempts is not None:  # rare: a failed try or a hold came first
            unhold(self, RELEASED)  # if it was held: released, now that a replica takes it
        transport = conn.transport
        assert transport is not None
        flow = client.flow
        if flow.client_full:
            flow.attach(transport)
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

    # --- pool.Downstream ----------------------------------------------------------------------------
    def upstream_pause(self) -> None:
        self.client.flow.upstream_paused()

    def upstream_resume(self) -> None:
        self.client.flow.upstream_resumed()

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
        client = self.client
        flow = client.flow
        keep = conn.keep_alive
        if keep and client.request_done:
            conn.earlier_request_bytes += self.sent_bytes
            if flow.client_full:
                flow.detach(conn.transport)  # type: ignore[arg-type]
            upstream.release(conn)
        else:
            conn.close()  # the replica said close, or answered before reading the whole body
        if flow.upstream_full:
            flow.upstream_resumed()
        self.record(conn.status)
        client.replica_done(keep, not self.due)

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None:
        """The replica's connection closed before its answer ended (or ended its tunnel)."""
        if conn is not self.upstream_conn:
            return
        client = self.client
        if client.phase is TUNNEL:
            self.upstream_conn = None
            client.close()
            return
        if client.phase is not PROXYING:
            return
        self.upstream_conn = None
        failed = self.upstream
        route = self.route
        assert failed is not None and route is not None
        self.release_upstream()
        client.flow.upstream_resumed()  # its full buffer went with it
        action = after_loss(
            answer_started=conn.got_bytes,
            resendable=self.resendable is not None,
            resend_unanswered=route.resend_unanswered,
            acknowledged=None if conn.got_bytes else conn.request_acknowledged(),
        )
        if action is AfterLoss.CUT:
            # Part of the answer already went to the client: all we can do is end the connection.
            self.record(502)
            client.close()
        elif action is AfterLoss.FAIL:
            not_resent = not route.resend_unanswered and self.resendable is not None
            client.fail(unanswered(reason, route.service, not_resent=not_resent))
        else:
            assert self.resendable is not None
            self.waiting = self.resendable
            self.resendable = None
            self.resend(failed, reason, stale=conn.reused, connect_failed=False)

    def upstream_upgraded(self, conn: UpstreamConnection) -> None:
        """The replica answered 101 (its head already went to the client): tunnel from now on."""
        if conn is not self.upstream_conn:
            return
        self.release_upstream()  # a tunnel is not an outstanding request
        self.record(101)
        self.clear_timer()  # the route's timeout is for answers, not for a WebSocket's life
        self.client.tunnel(conn)

    # --- failures: connect, resend, hold, timeout ---------------------------------------------------
    async def connect(self, upstream: UpstreamState, request_seq: int) -> None:
        client = self.client
        try:
            conn = await upstream.connect(self.loop)
        except OSError as e:
            upstream.cooldown_until = self.loop.time() + client.ctx.cooldown_s
            if request_seq == client.request_seq and self.upstream is upstream and client.phase is PROXYING:
                self.release_upstream()
                reason = f"connect to replica {upstream.name} failed: {e.strerror or e}"
                self.resend(upstream, reason, stale=False, connect_failed=True)
            return
        if request_seq != client.request_seq or self.upstream is not upstream or client.phase is not PROXYING:
            upstream.release(conn)  # the request went away meanwhile
            return
        self.send_to(upstream, conn)

    def resend(self, failed: UpstreamState, reason: str, *, stale: bool, connect_failed: bool) -> None:
        """Send the waiting request again after ``failed`` failed it (see retry.py for when). It
        picks from the current routing table: during a rolling update, the new version's replicas
        are there."""
        route = self.route
        assert route is not None
        route = self.route = self.client.ctx.routes.get(route.service) or route
        assert route.balancer is not None
        attempts = self.attempts_made()
        attempts.tried.append(failed)
        i = route.balancer.pick(route.upstreams, self.loop.time(), attempts.tried)
        if i >= 0 and self.explain:
            reason = f"resent after {failed.upstream.replica_id} failed; {route.balancer.reason}"
            self.explain_line = explain_line(route.upstreams[i].upstream.replica_id, reason)
        step = next_attempt(
            found_other=i >= 0, stale=stale, fresh_used=attempts.fresh_used, connect_failed=connect_failed
        )
        if step is NextAttempt.OTHER:
            self.send_to(route.upstreams[i])
        elif step is NextAttempt.FRESH_SAME:
            attempts.fresh_used = True
            self.send_to(failed, fresh=True)
        elif step is NextAttempt.HOLD:
            message = f"service '{route.service}' has no reachable replica: {reason}"
            hold(self, GatewayError(503, "no_ready_replica", message))
        else:
            self.client.fail(unanswered(reason, route.service))

    def attempts_made(self) -> Attempts:
        if self.attempts is None:
            self.attempts = Attempts()  # the first failure or hold of this request
        return self.attempts

    def resume(self, request_seq: int) -> None:
        """A held request looks at the routing table again: sent if a replica takes it, else it
        keeps its place. One whose connection to a replica is being opened is left to that attempt."""
        client = self.client
        if request_seq != client.request_seq or client.phase is not PROXYING or self.route is None:
            return
        if self.upstream is not None:
            return  # connecting: `connect` sends it, or brings it back here on failure
        service = self.route.service
        route = client.ctx.routes.get(service)
        if route is None or route.balancer is None:
            client.fail(GatewayError(404, "service_not_found", f"service '{service}' not found"))
            return
        self.route = route
        self.attempts_made().tried.clear()  # a new look: every replica deserves a try again
        self.dispatch(self.loop.time())

    def on_timeout(self, request_seq: int) -> None:
        client = self.client
        if request_seq != client.request_seq or client.phase is not PROXYING:
            return
        route = self.route
        assert route is not None
        conn = self.upstream_conn
        if conn is not None and conn.got_bytes:
            # The answer's head already went out: a 408 cannot follow it. Cut the connection.
            self.drop_upstream()
            self.record(408)
            client.close()
            return
        message = f"service '{route.service}' did not answer within {route.timeout_s:g} s (timeout_s)"
        client.fail(GatewayError(408, "timeout", message))

    # --- the end ------------------------------------------------------------------------------------
    def answer_started(self) -> bool:
        conn = self.upstream_conn
        return conn is not None and conn.got_bytes

    def record(self, status: int) -> None:
        """Count the request's outcome, once."""
        service_metrics = self.service_metrics
        if service_metrics is not None:
            self.service_metrics = None
            seconds = self.loop.time() - self.started
            service_metrics.finish(status, seconds)
            if self.split is not None:
                self.split.done(self, status, seconds)

    def respond(self, request_seq: int, response: bytes) -> None:
        """An answer made later (an async request's): dropped when the client went away or the
        request was answered otherwise."""
        client = self.client
        if request_seq != client.request_seq or client.phase is not PROXYING:
            return
        self.record(int(response[9:12]))
        self.transport.write(response)
        client.answered()

    def respond_error(self, request_seq: int, err: GatewayError) -> None:
        client = self.client
        if request_seq == client.request_seq and client.phase is PROXYING:
            client.fail(err)

    def abandon(self) -> None:
        """The client closed before the answer completed."""
        if self.attempts is not None:
            unhold(self, ABANDONED)  # if it was held: the client gave up waiting
        self.drop_upstream()

    def release_upstream(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.outstanding -= 1

    def drop_upstream(self) -> None:
        """Abandon the replica connection (aborted: its answer, if any, is no longer wanted), or
        the request's place in a hold queue (answered while held)."""
        if self.attempts is not None:
            unhold(self, ENDED)
        conn = self.upstream_conn
        if conn is not None:
            self.upstream_conn = None
            conn.client = None
            conn.abort()
        self.release_upstream()

    def clear_timer(self) -> None:
        """This request's timeout no longer applies (the lazy timer stays for the next one)."""
        self.due = 0.0

    def cancel_timer(self) -> None:
        """The connection ends: no timer keeps it alive."""
        self.due = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
