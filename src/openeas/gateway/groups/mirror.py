"""Owns mirrored traffic: a copy of a group's request sent to a candidate member, its answer
discarded (kept only to compare with the primary's), and nothing of it ever reaching the client.

Rules, so a mirror can never delay or fail the primary:

- the copy keeps its own bytes: the request body is copied as it streams to the primary (nothing
  waits for the copy), and the copy is sent once the client's request is complete, on the next
  loop turn (`Split.complete`), with a ``Content-Length`` even when the client sent it chunked;
- it goes over the candidate's own pooled connections (the same `UpstreamState`s as its live
  traffic, so the candidate's balancer counts the load), never over the primary's;
- its member has its own in-flight bound (`MIRROR_MAX_IN_FLIGHT`): a copy beyond it, a body over
  `MIRROR_MAX_BODY_BYTES`, a candidate with no routable replica or a request answered before its
  body was read whole is dropped and counted (``openeas_gateway_group_mirror_dropped_total``);
- its errors end at the copy: a refused connection, a closed one, a timeout (the candidate's
  route timeout, else `MIRROR_TIMEOUT_S`) are counted in the member's mirror metrics.

For `openeas group compare`, the first `CAPTURE_BYTES` of both answers are kept (the primary's by
a `Tee` around the client transport, only while a mirrored request is served) and compared once
both are complete (group_metrics.CompareStats).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpResponseParser

from openeas.gateway.groups.group_metrics import MemberMetrics, TrafficMetrics

if TYPE_CHECKING:
    from openeas.gateway.http.exchange import Exchange
    from openeas.gateway.http.pool import UpstreamConnection, UpstreamState
    from openeas.gateway.routing.routes import RouteState

MIRROR_MAX_IN_FLIGHT = 32  # copies in flight per group member per gateway; more are dropped
MIRROR_MAX_BODY_BYTES = 1024 * 1024  # request bodies larger than this are not mirrored
MIRROR_TIMEOUT_S = 30.0  # seconds a copy may take when its member's route sets no timeout
CAPTURE_BYTES = 64 * 1024  # bytes of each answer kept to compare a mirrored pair
MIRROR_HEADER = b"X-OpenEAS-Mirror: 1\r\n"  # tells the candidate that a request is a copy


def mirror_room(metrics: MemberMetrics) -> bool:
    return metrics.mirror_in_flight < MIRROR_MAX_IN_FLIGHT


class Capture(asyncio.Transport):
    """Keeps the first `CAPTURE_BYTES` written to it, forwarding everything to ``inner`` if any:
    a mirrored copy's sink (no inner), and the `Tee` that sees the primary's answer."""

    def __init__(self, inner: asyncio.Transport | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.data = bytearray()
        self.whole = True  # False once more than CAPTURE_BYTES were written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.inner is not None:
            self.inner.write(data)
        if self.whole:
            if len(self.data) + len(data) > CAPTURE_BYTES:
                self.whole = False
                self.data.clear()
            else:
                self.data += data

    # The rest goes to the client's transport (a Tee); a copy's sink has no more to do.
    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing() if self.inner is not None else False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default) if self.inner is not None else default

    def pause_reading(self) -> None:
        if self.inner is not None:
            self.inner.pause_reading()

    def resume_reading(self) -> None:
        if self.inner is not None:
            self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading() if self.inner is not None else False

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size() if self.inner is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.inner is not None:
            self.inner.set_write_buffer_limits(high, low)

    def captured(self) -> bytes | None:
        return bytes(self.data) if self.whole else None


class _Body:
    """Parser callbacks that keep a response's body."""

    __slots__ = ("done", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.parts.append(data)

    def on_message_complete(self) -> None:
        self.done = True


def response_body(raw: bytes | None) -> tuple[int, bytes | None]:
    """(status, body) of a captured HTTP/1.1 response; body None when it is not whole."""
    if raw is None:
        return 0, None
    body = _Body()
    parser = HttpResponseParser(body)
    try:
        parser.feed_data(raw)
        status = parser.get_status_code()
    except HttpParserError:
        return 0, None
    return status, (b"".join(body.parts) if body.done else None)


class Pair:
    """A mirrored request's two answers; compared once both are in."""

    __slots__ = ("mirror", "primary", "primary_service", "stats")

    def __init__(self, primary_service: str, stats: MemberMetrics) -> None:
        self.primary_service = primary_service
        self.stats = stats  # the mirror member's
        self.primary: tuple[int, bytes | None, float] | None = None  # status, raw answer, seconds
        self.mirror: tuple[int, bytes | None, float] | None = None

    def primary_done(self, status: int, raw: bytes | None, seconds: float) -> None:
        self.primary = (status, raw, seconds)
        self._maybe_compare()

    def mirror_done(self, status: int, raw: bytes | None, seconds: float) -> None:
        self.mirror = (status, raw, seconds)
        self._maybe_compare()

    def _maybe_compare(self) -> None:
        if self.primary is None or self.mirror is None:
            return
        p_status, p_raw, p_s = self.primary
        m_status, m_raw, m_s = self.mirror
        p_body = response_body(p_raw)[1] if p_raw is not None else None
        m_body = response_body(m_raw)[1] if m_raw is not None else None
        self.stats.compare.add(self.primary_service, p_status, p_body, p_s, m_status, m_body, m_s)


class MirrorCopy:
    """One copy of a request on its way to a mirror member (a `pool.Downstream`)."""

    __slots__ = (
        "body",
        "conn",
        "data",
        "done",
        "is_head",
        "loop",
        "metrics",
        "pair",
        "retried",
        "route",
        "service",
        "sink",
        "size",
        "started",
        "timer",
        "transport",
        "upstream",
    )

    def __init__(
        self,
        service: str,
        route: RouteState,
        metrics: MemberMetrics,
        primary_service: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.service = service
        self.route = route
        self.metrics = metrics
        self.loop = loop
        self.pair = Pair(primary_service, metrics)
        self.body: list[bytes] | None = []  # None: too large to mirror
        self.size = 0  # request body bytes so far
        self.sink = Capture()  # where the candidate's answer goes (kept for the comparison)
        self.transport: asyncio.Transport = self.sink
        self.data = b""
        self.conn: UpstreamConnection | None = None
        self.upstream: UpstreamState | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.done = False
        self.retried = False
        self.is_head = False

    def feed(self, data: bytes) -> None:
        body = self.body
        if body is None:
            return
        self.size += len(data)
        if self.size > MIRROR_MAX_BODY_BYTES:
            self.body = None
        else:
            body.append(data)

    def fire(self, head: list[bytes], chunked: bool, is_head: bool) -> None:
        """Send the copy (the client's request is complete). ``head``: the proxy's flat head,
        request line first, its last element the end of the head as sent to the primary."""
        metrics = self.metrics
        if self.body is None:
            metrics.drop("too_large")
            return
        if not mirror_room(metrics):
            metrics.drop("in_flight_limit")
            return
        route = self.route
        balancer = route.balancer
        i = balancer.pick(route.upstreams, self.loop.time(), ()) if balancer is not None else -1
        if i < 0:
            metrics.drop("no_replica")
            return
        body = b"".join(self.body)
        end = b"Content-Length: %d\r\n\r\n" % len(body) if chunked else b"\r\n"
        self.data = b"".join((*head[:-1], MIRROR_HEADER, end, body))
        self.body = None
        self.is_head = is_head
        upstream = self.upstream = route.upstreams[i]
        upstream.outstanding += 1
        metrics.mirror_in_flight += 1
        self.started = self.loop.time()
        timeout_s = route.timeout_s or MIRROR_TIMEOUT_S
        self.timer = self.loop.call_later(timeout_s, self._timed_out)
        conn = upstream.pop_idle()
        if conn is None:
            self.loop.create_task(self._connect(upstream))
        else:
            self._write(conn, reused=True)

    async def _connect(self, upstream: UpstreamState) -> None:
        try:
            conn = await upstream.connect(self.loop)
        except OSError:
            upstream.cooldown_until = self.loop.time() + 1.0
            self._finish(502)
            return
        if self.done:
            upstream.release(conn)
            return
        self._write(conn, reused=False)

    def _write(self, conn: UpstreamConnection, *, reused: bool) -> None:
        conn.client = self
        conn.reused = reused
        conn.got_bytes = False
        if self.is_head:
            conn.expect_head_response()
        self.conn = conn
        assert conn.transport is not None
        conn.transport.write(self.data)

    # --- pool.Downstream ------------------------------------------------------------------------
    def upstream_complete(self, conn: UpstreamConnection) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        conn.client = None
        upstream = self.upstream
        if conn.keep_alive and upstream is not None:
            conn.earlier_request_bytes += len(self.data)
            upstream.release(conn)
        else:
            conn.close()
        self._finish(conn.status)

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if conn.reused and not conn.got_bytes and not self.retried and not self.done:
            # An idle keep-alive connection the replica had closed: once more on a new one.
            self.retried = True
            self.sink = Capture()
            self.transport = self.sink
            assert self.upstream is not None
            self.loop.create_task(self._connect(self.upstream))
            return
        self._finish(502)

    def upstream_upgraded(self, conn: UpstreamConnection) -> None:
        self.upstream_lost(conn, "a mirrored request was upgraded")
        conn.abort()

    def upstream_pause(self) -> None:
        pass  # the copy's bytes are written at once; nothing to pause

    def upstream_resume(self) -> None:
        pass

    # --- the end ------------------------------------------------------------------------------------
    def _timed_out(self) -> None:
        self.timer = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.client = None
            conn.abort()
        self._finish(408)

    def _finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.upstream is not None:
            self.upstream.outstanding -= 1
        metrics = self.metrics
        metrics.mirror_in_flight -= 1
        seconds = self.loop.time() - self.started
        metrics.mirror.finish(status, seconds)
        self.pair.mirror_done(status, self.sink.captured(), seconds)


class LiveOnly:
    """A group request with no copy (``Exchange.split``): only its member's live metrics
    to count. One per member, shared by its requests: nothing is allocated per request."""

    __slots__ = ("live",)

    def __init__(self, live: TrafficMetrics) -> None:
        self.live = live

    def feed(self, data: bytes) -> None:
        pass

    def complete(
        self, head: list[bytes], chunked: bool, is_head: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        pass

    def done(self, ex: Exchange, status: int, seconds: float) -> None:
        self.live.finish(status, seconds)


class Split:
    """A group request being mirrored (``Exchange.split``): the member it was routed to
    and the copies being made of it."""

    __slots__ = ("copies", "member", "pairs", "tee")

    def __init__(self, member: MemberMetrics) -> None:
        self.member = member
        self.copies: list[MirrorCopy] | None = None  # copies not sent yet (the request is not complete)
        self.pairs: list[Pair] | None = None  # of the copies sent
        self.tee: Capture | None = None

    def add(self, copy: MirrorCopy, ex: Exchange) -> None:
        if self.copies is None:
            self.copies = []
            self.tee = Capture(ex.transport)
            ex.divert(self.tee)  # sees the primary's answer (for the comparison)
        self.copies.append(copy)

    def feed(self, data: bytes) -> None:
        """A piece of the request body (as sent to the primary, de-chunked)."""
        copies = self.copies
        if copies is not None:
            for c in copies:
                c.feed(data)

    def complete(
        self, head: list[bytes], chunked: bool, is_head: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        """The client's request is complete (``head``: the proxy's flat head as sent to the
        primary): the copies go on the next loop turn."""
        copies = self.copies
        if copies:
            self.copies = None
            self.pairs = [c.pair for c in copies]
            head = list(head)
            for c in copies:
                loop.call_soon(c.fire, head, chunked, is_head)

    def done(self, ex: Exchange, status: int, seconds: float) -> None:
        """The primary's outcome (`Exchange.record`): live metrics, its side of each
        pair; copies of a request answered before it was read whole are dropped."""
        self.member.live.finish(status, seconds)
        tee = self.tee
        if tee is None:
            return
        self.tee = None
        assert tee.inner is not None
        ex.divert(tee.inner)
        for c in self.copies or ():
            c.metrics.drop("incomplete")
        self.copies = None
        raw = tee.captured()
        for pair in self.pairs or ():
            pair.primary_done(status, raw, seconds)
