"""The gateway's client-side protocol without sockets, on the driven loop of tests/fakeloop.py."""

from __future__ import annotations

import pytest

from openeas.gateway.context import ProxyContext
from openeas.gateway.http.proxy import IDLE
from openeas.gateway.telemetry.metrics import GatewayMetrics
from tests.fakeloop import (
    GET,
    GET_UPSTREAM,
    OK,
    POST_HEAD,
    POST_HEAD_UPSTREAM,
    Gateway,
    error,
    route,
    transport,
)

# --- replica failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("resend_unanswered", [True, False], ids=["resend-on", "resend-off"])
def test_connect_failure_goes_to_another_replica(resend_unanswered: bool) -> None:
    gw = Gateway(route("a", "b", resend_unanswered=resend_unanswered))
    a, b = gw.replicas["a"], gw.replicas["b"]
    a.refuse = True
    client = gw.client()
    client.send(GET)
    assert a.conns == [] and a.cooldown_until == 1.5  # nothing was sent to a; avoided for cooldown_s
    assert b.received() == GET_UPSTREAM
    b.answer(OK)
    assert client.received() == OK
    assert gw.codes() == {200: 1} and gw.in_flight() == 0
    assert (a.outstanding, b.outstanding, len(b.idle)) == (0, 0, 1)


NOT_RESENT = (
    "replica a (10.0.0.1:8000) closed the connection before answering; not resent to another "
    "replica: service 'svc' does not resend unanswered requests (resend_unanswered)"
)


@pytest.mark.parametrize(
    ("resend_unanswered", "pooled", "tcp", "replica_read", "body_parts", "resent"),
    [
        pytest.param(True, False, False, True, 2, True, id="resend-on-whole-request"),
        pytest.param(True, False, False, True, 1, True, id="resend-on-partial-body"),
        pytest.param(True, True, True, False, 2, True, id="resend-on-stale-pooled"),
        pytest.param(False, False, True, True, 2, False, id="resend-off-whole-request-502"),
        pytest.param(False, False, True, True, 1, False, id="resend-off-partial-body-502"),
        pytest.param(False, False, False, True, 2, False, id="resend-off-ack-unknown-502"),
        pytest.param(False, True, True, True, 2, False, id="resend-off-pooled-read-502"),
        pytest.param(False, True, True, False, 2, True, id="resend-off-stale-pooled-never-acked"),
        pytest.param(False, False, True, False, 2, True, id="resend-off-fresh-never-acked"),
    ],
)
def test_replica_closes_before_answering(
    resend_unanswered: bool, pooled: bool, tcp: bool, replica_read: bool, body_parts: int, resent: bool
) -> None:
    gw = Gateway(route("a", "b", resend_unanswered=resend_unanswered))
    a, b = gw.replicas["a"], gw.replicas["b"]
    a.tcp = tcp
    # replica_read=False: the replica's socket is gone (closed while idle, or never accepted):
    # its kernel acknowledges nothing of this request.
    a.acks = replica_read
    if pooled:  # a keep-alive connection that carried 50 bytes of earlier, answered requests
        conn = a.open()
        conn.earlier_request_bytes = 50
        transport(conn).acked = 1 + 50
        a.idle.append(conn)
    client = gw.client()
    client.send(POST_HEAD)
    client.send(b"01234")
    if body_parts == 2:
        client.send(b"56789")
    sent = POST_HEAD_UPSTREAM + b"01234" + (b"56789" if body_parts == 2 else b"")
    assert a.received() == sent
    assert len(a.conns) == 1 and a.conns[0].reused is pooled
    a.close()
    if resent:
        assert b.received() == sent  # all of it so far, to the other replica
        if body_parts == 1:
            client.send(b"56789")  # the rest follows to where the request went
        assert b.received() == POST_HEAD_UPSTREAM + b"0123456789"
        b.answer(OK)
        assert client.received() == OK
        assert gw.codes() == {200: 1}
    else:
        assert b.conns == []
        assert client.received() == error(502, "upstream_failed", NOT_RESENT)
        assert gw.codes() == {502: 1}
        if body_parts == 1:
            client.send(b"56789")  # the rest of the body is read and dropped
            assert client.received() == b""
        assert client.conn.phase is IDLE  # ready for the next request
    assert (a.outstanding, b.outstanding, gw.in_flight()) == (0, 0, 0)


def test_last_replica_closing_unanswered_gets_one_fresh_connection_then_502() -> None:
    # A pooled connection that fails says little about the replica: one more try on a new one.
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    a.idle.append(a.open())
    client = gw.client()
    client.send(GET)
    a.close(0)
    assert [a.received(0), a.received(1)] == [GET_UPSTREAM, GET_UPSTREAM]
    assert a.conns[1].reused is False
    a.close(1)
    message = "replica a (10.0.0.1:8000) closed the connection before answering"
    assert client.received() == error(502, "upstream_failed", message)
    assert len(a.conns) == 2 and gw.codes() == {502: 1}


def test_replica_closes_mid_response() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    a.answer(partial)
    a.close()
    assert client.received() == partial  # nothing appended: the client sees a short body
    assert client.transport.closed
    assert gw.codes() == {502: 1} and gw.in_flight() == 0 and a.outstanding == 0


def test_client_disconnects_mid_stream() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    a.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    client.conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    gw.loop.run_ready()
    assert transport(a.conns[0]).aborted  # the rest of the answer is not wanted
    assert a.idle == [] and a.outstanding == 0
    assert gw.codes() == {499: 1} and gw.in_flight() == 0
    assert gw.ctx.connections == set()


# --- no replica: hold, then serve or 503 --------------------------------------------------------


@pytest.mark.parametrize(
    "recovery", ["table-gains-a-replica", "refusing-replica-accepts-again"], ids=lambda r: r
)
def test_held_request_is_served_when_a_replica_becomes_reachable(recovery: str) -> None:
    gw = Gateway(route() if recovery == "table-gains-a-replica" else route("a"))
    if recovery == "refusing-replica-accepts-again":
        gw.replicas["a"].refuse = True
    client = gw.client()
    client.send(GET)
    gw.loop.advance(1.0)
    assert client.received() == b""  # held, not answered
    if recovery == "table-gains-a-replica":
        gw.set_routes(route("a"))
    else:
        gw.replicas["a"].refuse = False
    gw.loop.advance(0.05)
    a = gw.replicas["a"]
    assert a.received() == GET_UPSTREAM
    a.answer(OK)
    assert client.received() == OK
    assert gw.codes() == {200: 1}


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        pytest.param(
            (),
            "service 'svc' has no ready replica; none became ready within 2 s (hold_timeout_ms)",
            id="no-replica",
        ),
        pytest.param(
            ("a",),
            "service 'svc' has no reachable replica: connect to replica a (10.0.0.1:8000) failed: "
            "Connection refused; none became ready within 2 s (hold_timeout_ms)",
            id="every-replica-refuses",
        ),
    ],
)
def test_held_request_gets_503_when_the_hold_expires(replicas: tuple[str, ...], message: str) -> None:
    gw = Gateway(route(*replicas, hold_timeout_s=2.0))
    for r in gw.replicas.values():
        r.refuse = True
    client = gw.client()
    client.send(GET)
    gw.loop.advance(1.9)
    assert client.received() == b""
    gw.loop.advance(0.2)
    assert client.received() == error(503, "no_ready_replica", message)
    assert gw.codes() == {503: 1} and gw.in_flight() == 0
    gw.loop.advance(10)
    assert client.received() == b"" and gw.loop.pending() == []  # the hold stopped polling


# --- timeouts -----------------------------------------------------------------------------------


def test_timeout_before_any_response_byte_is_a_408_and_the_connection_stays() -> None:
    gw = Gateway(route("a", timeout_s=1.0))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    gw.loop.advance(0.99)
    assert client.received() == b""
    gw.loop.advance(0.02)
    message = "service 'svc' did not answer within 1 s (timeout_s)"
    assert client.received() == error(408, "timeout", message)
    assert transport(a.conns[0]).aborted and a.idle == []
    client.send(GET)  # the client connection is still good
    assert len(a.conns) == 2 and a.received() == GET_UPSTREAM
    a.answer(OK)
    assert client.received() == OK
    assert gw.codes() == {408: 1, 200: 1}


def test_timeout_after_the_response_head_cuts_the_connection() -> None:
    gw = Gateway(route("a", timeout_s=1.0))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    a.answer(head)
    gw.loop.advance(1.0)
    assert client.received() == head  # no 408 after a 200 head: the connection is cut instead
    assert client.transport.closed and transport(a.conns[0]).aborted
    assert gw.codes() == {408: 1} and gw.in_flight() == 0


# --- request bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n", id="413"),
        pytest.param(OK, id="200"),
    ],
)
def test_early_answer_while_the_body_streams(answer: bytes) -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(POST_HEAD + b"0123")
    a.answer(answer)
    assert client.received() == answer
    assert transport(a.conns[0]).closed and a.idle == []  # mid-request: not reusable
    client.send(b"456789")  # the rest of the body: read and dropped
    assert a.received(0) == POST_HEAD_UPSTREAM + b"0123"
    client.send(GET)  # keep-alive works for the next request
    assert len(a.conns) == 2 and a.received(1) == GET_UPSTREAM
    a.answer(OK)
    assert client.received() == OK
    status = int(answer.split(b" ")[1])
    assert gw.codes() == ({status: 1, 200: 1} if status != 200 else {200: 2})


def test_chunked_body_over_the_limit_is_a_413_and_a_close() -> None:
    gw = Gateway(route("a", max_body_bytes=10))
    a = gw.replicas["a"]
    client = gw.client()
    head = b"POST /api/predict/svc HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    client.send(head + b"6\r\nabcdef\r\n")
    assert a.received() == b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n"
    client.send(b"6\r\nghijkl\r\n")
    message = "request body exceeds 10 bytes, the limit of service 'svc'"
    assert client.received() == error(413, "body_too_large", message, close=True)
    assert client.transport.closed and transport(a.conns[0]).aborted
    assert gw.codes() == {413: 1} and a.outstanding == 0


# --- pipelining ---------------------------------------------------------------------------------


GET2 = GET.replace(b"q=1", b"q=2")
GET3 = GET.replace(b"q=1", b"q=3")
OK2 = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2"
HEALTHZ = b"GET /healthz HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("reads", "upstream", "answers"),
    [
        pytest.param([GET + GET2], [GET_UPSTREAM, GET_UPSTREAM.replace(b"q=1", b"q=2")], 2, id="two-gets"),
        pytest.param([GET + GET2 + GET3], [GET_UPSTREAM, GET_UPSTREAM.replace(b"q=1", b"q=2"), GET_UPSTREAM.replace(b"q=1", b"q=3")], 3, id="three-gets"),
        pytest.param([b"\r\n" + HEALTHZ + GET + GET2], [GET_UPSTREAM, GET_UPSTREAM.replace(b"q=1", b"q=2")], 2, id="local-answer-first"),
        pytest.param([POST_HEAD + b"0123456789" + GET], [POST_HEAD_UPSTREAM + b"0123456789", GET_UPSTREAM], 2, id="post-with-body-then-get"),
        pytest.param([POST_HEAD + b"01234", b"56789" + GET], [POST_HEAD_UPSTREAM + b"0123456789"], 1, id="read-starts-inside-a-request-closes"),
    ],
)
def test_pipelined_requests_in_one_read_are_answered_in_order(reads: list[bytes], upstream: list[bytes], answers: int) -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    for data in reads:
        client.send(data)
    sent = b""
    for i, expected in enumerate(upstream):
        sent += expected
        assert a.received() == sent  # one at a time: the next only after this one is answered
        a.answer(OK if i == 0 else OK2)
        gw.loop.run_ready()
    got = client.received()
    if b"healthz" in reads[0]:
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(OK + OK2)
    else:
        assert got == OK + OK2 * (answers - 1)
    # Served in full, the connection stays; the one case whose read started inside a request
    # closes after its answer (the client sends the rest again).
    assert client.transport.closed is (answers == 1)
    assert gw.codes() == ({200: answers})


def test_request_sent_before_the_answer_is_served_after_it() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    client.send(GET.replace(b"q=1", b"q=2"))
    assert not client.transport.reading  # kept, and reading paused, until the first is answered
    assert a.received() == GET_UPSTREAM
    a.answer(OK)
    assert client.transport.reading
    assert len(a.conns) == 1 and a.received() == GET_UPSTREAM + GET_UPSTREAM.replace(b"q=1", b"q=2")
    a.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2")
    assert client.received() == OK + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2"
    assert not client.transport.closed and gw.codes() == {200: 2}


# --- flow control -------------------------------------------------------------------------------


def test_backpressure_both_ways() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(POST_HEAD)
    conn = a.conns[0]
    conn.pause_writing()  # the replica's socket buffer is full: stop reading the client
    assert not client.transport.reading
    conn.resume_writing()
    assert client.transport.reading
    client.conn.pause_writing()  # the client's buffer is full: stop reading the replica
    assert not transport(conn).reading
    client.send(b"0123456789")
    a.answer(OK)
    assert transport(conn).reading and a.idle == [conn]  # pooled, and not left paused
    client.send(GET)
    assert not transport(conn).reading  # the next request on it inherits the client's pause
    client.conn.resume_writing()
    assert transport(conn).reading


# --- limits on the request head -----------------------------------------------------------------

HEADERS_TOO_LARGE = "request headers exceed 5 lines or 100 bytes (max_headers, max_header_bytes)"


@pytest.mark.parametrize(
    ("reads", "status", "code", "message"),
    [
        pytest.param(
            [b"GET /api/predict/svc/" + b"u" * 60 + b" HTTP/1.1\r\n"],
            414,
            "uri_too_long",
            "request target exceeds 50 bytes (max_url_bytes)",
            id="url-in-one-read",
        ),
        pytest.param(
            [b"GET /api/predict/svc/" + b"u" * 20, b"u" * 20, b"u" * 20],
            414,
            "uri_too_long",
            "request target exceeds 50 bytes (max_url_bytes)",
            id="url-in-pieces",
        ),
        pytest.param(
            [b"GET /api/predict/svc HTTP/1.1\r\n" + b"X-A: 1\r\n" * 7],
            431,
            "headers_too_large",
            HEADERS_TOO_LARGE,
            id="header-count",
        ),
        pytest.param(
            [b"GET /api/predict/svc HTTP/1.1\r\nX-A: " + b"v" * 120 + b"\r\nX-B: 1\r\n"],
            431,
            "headers_too_large",
            HEADERS_TOO_LARGE,
            id="header-bytes",
        ),
        pytest.param(
            [b"GET /api/predict/svc HTTP/1.1\r\nX-A: " + b"v" * 100, b"v" * 300],
            431,
            "headers_too_large",
            HEADERS_TOO_LARGE,
            id="one-header-still-arriving",
        ),
    ],
)
def test_head_over_a_limit_is_refused_before_routing(
    reads: list[bytes], status: int, code: str, message: str
) -> None:
    gw = Gateway(route("a"), max_url_bytes=50, max_header_bytes=100, max_headers=5)
    client = gw.client()
    for data in reads:
        client.send(data)
    assert client.received() == error(status, code, message, close=True)  # one answer
    assert client.transport.closed and gw.replicas["a"].conns == []
    assert gw.metrics.rejected == {code: 1}
    assert f'openeas_gateway_rejected_total{{reason="{code}"}} 1' in gw.metrics.render().decode()


def test_head_within_the_limits_is_served() -> None:
    gw = Gateway(route("a"), max_url_bytes=50, max_header_bytes=100, max_headers=5)
    client = gw.client()
    client.send(b"GET /api/predict/svc/" + b"u" * 29 + b" HTTP/1.1\r\n" + b"X-A: 12345678\r\n" * 5 + b"\r\n")
    assert gw.replicas["a"].received().startswith(b"GET /" + b"u" * 29 + b" HTTP/1.1\r\n")
    gw.replicas["a"].answer(OK)
    assert client.received() == OK and gw.metrics.rejected == {}


@pytest.mark.parametrize("size", [100, 600, 5000], ids=lambda n: f"{n}-byte-urls")
def test_target_cache_keeps_only_short_urls_and_stays_bounded(size: int) -> None:
    ctx = ProxyContext(GatewayMetrics())
    for i in range(5000):
        url = b"/api/predict/svc/%d/" % i
        ctx.resolve(url + b"x" * (size - len(url)))
    kept = len(ctx.targets)
    assert kept <= 4096 and (kept == 0 if size > 512 else kept > 0)


# --- deadlines ----------------------------------------------------------------------------------

DEADLINES = {"head_timeout_s": 1.0, "keepalive_timeout_s": 2.0, "body_timeout_s": 3.0}


@pytest.mark.parametrize(
    ("first", "trickle", "wait", "answer", "kind"),
    [
        pytest.param(
            b"",
            b"",
            1.2,
            error(408, "head_timeout", "request head not complete within 1 s (head_timeout_s)", close=True),
            "head",
            id="connection-sends-nothing",
        ),
        pytest.param(
            b"",
            GET,
            1.2,
            error(408, "head_timeout", "request head not complete within 1 s (head_timeout_s)", close=True),
            "head",
            id="head-trickled-byte-by-byte",
        ),
        pytest.param(GET, b"", 2.2, OK, "keepalive", id="idle-keep-alive"),
        pytest.param(
            POST_HEAD + b"0123",
            b"",
            3.2,
            error(408, "body_timeout", "request body stalled for 3 s (body_timeout_s)", close=True),
            "body",
            id="body-stops-arriving",
        ),
    ],
)
def test_deadline_closes_the_connection(
    first: bytes, trickle: bytes, wait: float, answer: bytes, kind: str
) -> None:
    gw = Gateway(route("a"), **DEADLINES)
    client = gw.client()
    client.send(first)
    if first == GET:
        gw.replicas["a"].answer(OK)
    waited = 0.0
    while waited < wait:  # trickled bytes (every 0.1 s) do not move the head's deadline
        gw.loop.advance(0.1)
        waited += 0.1
        if trickle and not client.transport.closed:
            client.send(trickle[:1])
            trickle = trickle[1:]
    assert client.received() == answer and client.transport.closed
    assert gw.metrics.timeouts == {kind: 1}
    gw.loop.run_ready()
    assert gw.ctx.connections == set() and gw.metrics.connections == 0
    if first.startswith(b"POST"):
        assert transport(gw.replicas["a"].conns[0]).aborted and gw.in_flight() == 0
        assert gw.replicas["a"].outstanding == 0 and gw.codes() == {408: 1}


@pytest.mark.parametrize(
    ("gap", "closed"),
    [pytest.param(2.5, False, id="body-keeps-coming"), pytest.param(0.5, False, id="keep-alive-reused")],
)
def test_activity_moves_the_deadline(gap: float, closed: bool) -> None:
    gw = Gateway(route("a"), **DEADLINES)
    a = gw.replicas["a"]
    client = gw.client()
    if gap > 1:  # a body whose parts come 2.5 s apart (under body_timeout_s), 10 s in all
        client.send(b"POST /api/predict/svc HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
        for part in (b"0", b"1", b"2", b"3"):
            gw.loop.advance(gap)
            client.send(part)
        a.answer(OK)
    else:  # requests 0.5 s apart on one keep-alive connection, 10 s in all
        for _ in range(20):
            client.send(GET)
            a.answer(OK)
            gw.loop.advance(gap)
    assert client.transport.closed is closed and gw.metrics.timeouts == {}
    assert OK in client.received()


def test_connection_cap_answers_503_and_frees_its_place() -> None:
    gw = Gateway(route("a"), max_connections=2)
    first, _ = gw.client(), gw.client()
    third = gw.client()
    message = "the gateway holds 2 client connections, its limit (max_connections)"
    assert third.received() == error(503, "too_many_connections", message, close=True)
    assert third.transport.closed and len(gw.ctx.connections) == 2
    first.transport.close()
    gw.loop.run_ready()
    fourth = gw.client()
    fourth.send(GET)
    gw.replicas["a"].answer(OK)
    assert fourth.received() == OK
    assert gw.metrics.rejected == {"too_many_connections": 1} and gw.metrics.connections == 2
    assert "openeas_gateway_connections 2" in gw.metrics.render().decode()


# --- upgrades, bad bodies, hop-by-hop headers -----------------------------------------------------

UPGRADE_REFUSED = "protocol upgrades other than a WebSocket GET are unsupported"
WS_HEAD = (
    b"GET /api/predict/svc/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
WS_HEAD_UPSTREAM = (
    b"GET /ws HTTP/1.1\r\nHost: gw\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /api/predict/svc HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            id="h2c",
        ),
        pytest.param(
            b"POST /api/predict/svc HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello",
            id="post-upgrade-with-body",
        ),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", id="connect"),
    ],
)
def test_upgrade_is_refused_before_anything_is_forwarded(request_bytes: bytes) -> None:
    gw = Gateway(route("a"))
    client = gw.client()
    client.send(request_bytes)
    assert client.received() == error(501, "upgrade_not_supported", UPGRADE_REFUSED, close=True)  # once
    assert client.transport.closed and gw.replicas["a"].conns == []
    assert gw.replicas["a"].outstanding == 0 and gw.metrics.services["svc"].in_flight == 0
    assert gw.metrics.rejected == {"upgrade_not_supported": 1}


def test_body_that_does_not_parse_gets_a_400() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(
        b"POST /api/predict/svc HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    client.send(b"zz\r\n")
    answer = client.received()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b'"code": "bad_request"' in answer
    assert client.transport.closed and transport(a.conns[0]).aborted
    assert gw.codes() == {400: 1} and gw.in_flight() == 0 and a.outstanding == 0


def test_headers_named_by_connection_are_not_forwarded() -> None:
    gw = Gateway(route("a"))
    client = gw.client()
    client.send(
        b"GET /api/predict/svc HTTP/1.1\r\nHost: gw\r\nX-Secret: s\r\nX-Kept: k\r\nConnection: keep-alive, X-Secret\r\n\r\n"
    )
    assert gw.replicas["a"].received() == b"GET / HTTP/1.1\r\nHost: gw\r\nX-Kept: k\r\n\r\n"


def test_resend_picks_from_the_current_routing_table() -> None:
    # A rolling update: the table now holds the new version's replica b only; the request that
    # a (old version) drops unanswered goes to b, not to a fresh connection to a.
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    gw.set_routes(route("b"))
    a.close()
    b = gw.replicas["b"]
    assert b.received() == GET_UPSTREAM and len(a.conns) == 1
    b.answer(OK)
    assert client.received() == OK and gw.codes() == {200: 1}


def test_replica_answering_a_departed_client_is_dropped_quietly() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(GET)
    client.transport.closed = True  # the client's socket is gone; connection_lost not yet run
    a.answer(OK)  # uvloop raises on the write: not an error to log
    assert transport(a.conns[0]).aborted
    client.conn.connection_lost(None)
    assert gw.in_flight() == 0 and a.outstanding == 0 and gw.codes() == {499: 1}


# --- WebSocket tunnel ---------------------------------------------------------------------------


@pytest.mark.parametrize("early_frame", [b"", b"\x81\x02hi"], ids=["frames-after-101", "frame-before-101"])
def test_websocket_is_tunnelled_after_the_replicas_101(early_frame: bytes) -> None:
    gw = Gateway(route("a", timeout_s=1.0))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(WS_HEAD + early_frame)
    assert a.received() == WS_HEAD_UPSTREAM  # the handshake, its own Connection/Upgrade pair
    a.answer(SWITCHING + b"\x81\x05hello")
    assert client.received() == SWITCHING + b"\x81\x05hello"
    assert a.received() == WS_HEAD_UPSTREAM + early_frame  # held until the 101, then sent
    client.send(b"\x81\x03abc" + b"GET / HTTP/1.1\r\n\r\n")  # not HTTP any more: bytes as they are
    assert a.received().endswith(b"\x81\x03abc" + b"GET / HTTP/1.1\r\n\r\n")
    gw.loop.advance(100)  # no route timeout, no keep-alive or head deadline in a tunnel
    a.answer(b"\x81\x03xyz")
    assert client.received() == b"\x81\x03xyz" and not client.transport.closed
    assert gw.codes() == {101: 1} and gw.in_flight() == 0 and a.outstanding == 0
    a.close()  # the replica ends it: so does the gateway
    assert client.transport.closed and a.idle == [] and gw.metrics.timeouts == {}


def test_websocket_client_leaving_closes_the_replica_side() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(WS_HEAD)
    a.answer(SWITCHING)
    client.transport.close()
    gw.loop.run_ready()
    assert transport(a.conns[0]).closed and a.idle == [] and gw.ctx.connections == set()


def test_websocket_refused_by_the_replica_closes_after_its_answer() -> None:
    gw = Gateway(route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(WS_HEAD)
    refusal = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    a.answer(refusal)
    assert client.received() == refusal and client.transport.closed
    assert gw.codes() == {400: 1} and gw.in_flight() == 0


def test_connections_timing_out_together_expire_in_batches() -> None:
    # 150 silent connections reach their head deadline at once: the sweep closes 64 per loop turn,
    # so requests of other clients run between the batches.
    gw = Gateway(route("a"), **DEADLINES)
    clients = [gw.client() for _ in range(150)]
    gw.loop.now = 1.5  # past every head deadline; the sweep has not run yet
    gw.ctx._sweep(gw.loop)  # type: ignore[arg-type]
    assert sum(c.transport.closed for c in clients) == 64  # the first batch; the rest is queued
    gw.loop.run_ready()
    assert sum(c.transport.closed for c in clients) == 150 and gw.metrics.timeouts == {"head": 150}
