"""Owns what guards the gateway against its clients, for `openeas.gateway.proxy.ClientConnection`:
the phases a client connection goes through (`Phase`), its one deadline and what it ends (head,
idle keep-alive, body gap), the answers to heads over a limit (414, 431), to protocol upgrades
(501), to a full gateway (503) and to a request that does not parse (400); the slow path of
authorization (signed requests, refusals), the gateway's own answers (/metrics, /healthz, 404),
and the start of a WebSocket tunnel once a replica answered 101.

The functions here become methods of `ClientConnection` (assigned in its class body): they are
the connection's rare paths, kept out of the module that holds its hot path. The limits
themselves are settings of `openeas.gateway.context.ProxyContext`.
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpRequestParser

from openeas.gateway.auth import AuthError, SignedBody, authorize
from openeas.gateway.context import NEVER
from openeas.gateway.errors import GatewayError, error_response
from openeas.gateway.local import local_answer
from openeas.gateway.split import GROUP_STATS_PREFIX, group_stats_answer

if TYPE_CHECKING:
    from openeas.gateway.pool import UpstreamConnection
    from openeas.gateway.proxy import ClientConnection


class Phase(IntEnum):
    IDLE = 0  # waiting for (or parsing the head of) a request
    PROXYING = 1  # the request goes to a replica; its response streams back
    ANSWERED = 2  # the response is complete; the rest of the request body is read and discarded
    CLOSED = 3
    TUNNEL = 4  # a WebSocket: the replica answered 101, bytes go both ways unparsed


# Module-level names: read as fast globals on the hot path, where phases are compared by identity.
IDLE = Phase.IDLE
PROXYING = Phase.PROXYING
ANSWERED = Phase.ANSWERED
CLOSED = Phase.CLOSED
TUNNEL = Phase.TUNNEL

# What the connection's deadline (`ClientConnection.deadline`) ends; also the label of
# openeas_gateway_timeouts_total. Compared by identity.
KEEPALIVE = "keepalive"  # idle between requests: closed silently
HEAD = "head"  # a request head being read: 408 and close
BODY = "body"  # the gap between two reads of a request body: 408 (if nothing was answered) and close
WAIT = "wait"  # the request is complete and waits for its answer (the route's timeout_s rules)


class Pipelined(Exception):
    """A second request arrived in the same read as the first one (raised in on_url)."""


class _Ends:
    """Parser callbacks that only count complete requests."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def requests_end(data: bytes, requests: int) -> int | None:
    """Where the first ``requests`` requests of ``data`` (which starts with a request) end, found
    by parsing prefixes with a fresh parser (httptools tells no offsets); None if they do not."""

    def complete(size: int) -> bool:
        ends = _Ends()
        try:
            HttpRequestParser(ends).feed_data(data[:size])
        except HttpParserError:
            return True  # cannot tell: treated as past the end, and checked below
        return ends.complete >= requests

    low, high = 1, len(data)  # the smallest size that completes them, by bisection
    while low < high:
        middle = (low + high) // 2
        if complete(middle):
            high = middle
        else:
            low = middle + 1
    ends = _Ends()
    try:
        HttpRequestParser(ends).feed_data(data[:low])
    except HttpParserError:
        return None
    return low if ends.complete == requests else None


def pipelined(conn: ClientConnection, data: bytes, requests: int) -> None:
    """A read held the end of the request being served and the start of the next one: the parser
    stopped there. The rest of the read is kept, and parsed once this request is answered (as a
    request sent in a later read is). ``requests``: how many requests this read completed, the
    first starting at its first byte; 0 when the read started inside a request (its start is
    unknown here): then the connection closes after this answer and the client sends the rest
    again (HTTP/1.1 lets a server close instead of answering pipelined requests)."""
    end = requests_end(data, requests) if requests else None
    if end is None:
        conn.keep_alive = False
        return
    conn.parser = HttpRequestParser(conn)  # the old one stopped in the next request's head
    conn.flow.keep_early(data[end:])


UPGRADE_REFUSED = (
    501,
    "upgrade_not_supported",
    "protocol upgrades other than a WebSocket GET are unsupported",
)


def refuse(conn: ClientConnection, err: GatewayError) -> None:
    """Answer ``err`` before anything was routed, count it by its code, and close."""
    conn.ctx.metrics.reject(err.code)
    conn.keep_alive = False
    conn._local_error(err)


def too_many_connections(limit: int) -> GatewayError:
    message = f"the gateway holds {limit} client connections, its limit (max_connections)"
    return GatewayError(503, "too_many_connections", message)


def uri_too_long(limit: int) -> GatewayError:
    return GatewayError(414, "uri_too_long", f"request target exceeds {limit} bytes (max_url_bytes)")


def headers_too_large(conn: ClientConnection) -> GatewayError:
    ctx = conn.ctx
    message = (
        f"request headers exceed {ctx.max_headers} lines or {ctx.max_header_bytes} bytes "
        "(max_headers, max_header_bytes)"
    )
    return GatewayError(431, "headers_too_large", message)


def parse_failed(conn: ClientConnection, e: HttpParserError) -> None:
    """The parser stopped on ``e``: a limit a callback raised, or bytes that are not HTTP."""
    cause = e.__context__
    phase = conn.phase
    if isinstance(cause, GatewayError):  # a limit, raised by a parser callback
        if phase is IDLE:
            refuse(conn, cause)
        return
    err = GatewayError(400, "bad_request", f"malformed HTTP request: {e}")
    if phase is IDLE:
        conn._local_error(err)
    elif phase is PROXYING and not (conn.upstream_conn is not None and conn.upstream_conn.got_bytes):
        conn._fail(err, close=True)  # a body that does not parse: nothing was answered yet
    else:  # the replica's answer already started, or was complete: all that is left is to close
        conn._drop_upstream()
        conn._record(400)
        conn._close()


def expire(conn: ClientConnection) -> None:
    """The connection's deadline passed (called by the context's sweep)."""
    kind = conn.deadline_kind
    conn.deadline = NEVER
    ctx = conn.ctx
    ctx.metrics.timed_out(kind)
    phase = conn.phase
    if kind is HEAD and phase is IDLE:
        message = f"request head not complete within {ctx.head_timeout_s:g} s (head_timeout_s)"
        conn._local_error(GatewayError(408, "head_timeout", message))
    elif kind is BODY and phase is PROXYING and not (conn.upstream_conn and conn.upstream_conn.got_bytes):
        message = f"request body stalled for {ctx.body_timeout_s:g} s (body_timeout_s)"
        conn._fail(GatewayError(408, "body_timeout", message), close=True)
    else:  # idle keep-alive, or a stalled body whose answer already started
        conn._drop_upstream()
        conn._record(408)
        conn._close()


# --- answers of the gateway itself, authorization, the WebSocket tunnel's start --------------


def answer_locally(client: ClientConnection, method: bytes) -> None:
    """A request outside /api/predict: /metrics, /healthz or 404."""
    path = client.url.partition(b"?")[0]
    if path.startswith(GROUP_STATS_PREFIX):
        client._local_answer(group_stats_answer(client, method, path))
        return
    try:
        response = local_answer(method, path, client.ctx.metrics, close=not client.keep_alive)
    except GatewayError as e:
        client._local_error(e)
        return
    client._local_answer(response)

def local_error(client: ClientConnection, err: GatewayError) -> None:
    if err.status in (400, 408, 414, 431, 501):
        client.keep_alive = False  # the rest of the stream cannot be trusted
    client.ctx.metrics.unrouted(err.status)
    client._local_answer(error_response(err, close=not client.keep_alive))


def authorize_request(client: ClientConnection, method: bytes) -> bool:
    """The slow auth path (signed requests, refusals); False when the request was answered."""
    route = client.route
    assert route is not None and route.creds is not None
    try:
        expected_md5 = authorize(
            route.creds,
            route.service,
            client.authorization,
            method=method,
            content_md5=client.content_md5,
            content_type=client.content_type,
            date=client.date,
            path=client.url.partition(b"?")[0],
            now=time.time(),
            max_skew_s=client.ctx.max_date_skew_s,
        )
    except AuthError as e:
        client._fail(e)
        return False
    if expected_md5 is not None:
        client.signed_body = SignedBody(expected_md5)
    return True


def upstream_upgraded(client: ClientConnection, conn: UpstreamConnection) -> None:
    """The replica answered 101 (its head already went to the client): tunnel from now on."""
    if conn is not client.upstream_conn:
        return
    client._release_upstream()  # a tunnel is not an outstanding request
    client._record(101)
    client._clear_timer()  # the route's timeout is for answers, not for a WebSocket's life
    client.phase = TUNNEL
    client.deadline = NEVER
    early = client.flow.take_early()  # frames the client sent before the 101
    if early:
        conn.transport.writelines(early)  # type: ignore[union-attr]
    client.flow.resume_client()
