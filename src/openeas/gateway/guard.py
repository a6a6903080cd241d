"""Owns what guards the gateway against its clients, for `openeas.gateway.proxy.ClientConnection`:
the phases a client connection goes through (`Phase`), its one deadline and what it ends (head,
idle keep-alive, body gap), the answers to heads over a limit (414, 431), to protocol upgrades
(501), to a full gateway (503) and to a request that does not parse (400).

The functions here become methods of `ClientConnection` (assigned in its class body): they are
the connection's rare paths, kept out of the module that holds its hot path. The limits
themselves are settings of `openeas.gateway.context.ProxyContext`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from httptools import HttpParserError

from openeas.gateway.context import NEVER
from openeas.gateway.errors import GatewayError

if TYPE_CHECKING:
    from openeas.gateway.proxy import ClientConnection


class Phase(IntEnum):
    IDLE = 0  # waiting for (or parsing the head of) a request
    PROXYING = 1  # the request goes to a replica; its response streams back
    ANSWERED = 2  # the response is complete; the rest of the request body is read and discarded
    CLOSED = 3


# Module-level names: read as fast globals on the hot path, where phases are compared by identity.
IDLE = Phase.IDLE
PROXYING = Phase.PROXYING
ANSWERED = Phase.ANSWERED
CLOSED = Phase.CLOSED

# What the connection's deadline (`ClientConnection.deadline`) ends; also the label of
# openeas_gateway_timeouts_total. Compared by identity.
KEEPALIVE = "keepalive"  # idle between requests: closed silently
HEAD = "head"  # a request head being read: 408 and close
BODY = "body"  # the gap between two reads of a request body: 408 (if nothing was answered) and close
WAIT = "wait"  # the request is complete and waits for its answer (the route's timeout_s rules)


class Pipelined(Exception):
    """A second request arrived in the same read as the first one."""


UPGRADE_REFUSED = (501, "upgrade_not_supported", "protocol upgrades (WebSocket, CONNECT) are unsupported")


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
    """The parser stopped on ``e``: a limit a callback raised, a pipelined request, or bad bytes."""
    cause = e.__context__
    if isinstance(cause, Pipelined):
        return  # the connection closes after the current answer; see on_url
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
