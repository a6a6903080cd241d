"""Owns what guards the gateway against its clients, for `openeas.gateway.http.proxy.ClientConnection`:
the phases a client connection goes through (`Phase`), its one deadline and what it ends (head,
idle keep-alive, body gap), the answers to heads over a limit (414, 431), to protocol upgrades
(501) and to a full gateway (503); where a pipelined request starts; the slow path of
authorization (signed requests, refusals) and the gateway's own answers (/metrics, /healthz, 404).

The connection (proxy.py) acts on what these return: the errors, where a pipelined request
starts, the expected Content-MD5 of a signed request, a local answer. The limits themselves are
settings of `openeas.gateway.context.ProxyContext`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpRequestParser

from openeas.gateway.errors import GatewayError
from openeas.gateway.groups.split import GROUP_STATS_PREFIX, authorize_client, group_stats_answer
from openeas.gateway.http.local import local_answer

if TYPE_CHECKING:
    from openeas.gateway.http.proxy import ClientConnection
    from openeas.gateway.routing.routes import RouteState


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


def pipelined_end(data: bytes, requests: int) -> int | None:
    """Where the next request starts in a read that held the end of the request being served and
    the start of the next one (the parser stopped there). ``requests``: how many requests this
    read completed, the first starting at its first byte; 0 when the read started inside a
    request (its start is unknown here): None then, and the connection closes after this answer
    and the client sends the rest again (HTTP/1.1 lets a server close instead of answering
    pipelined requests)."""
    return requests_end(data, requests) if requests else None


UPGRADE_REFUSED = (
    501,
    "upgrade_not_supported",
    "protocol upgrades other than a WebSocket GET are unsupported",
)


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


# --- answers of the gateway itself, authorization ------------------------------------------


def local_response(client: ClientConnection, method: bytes) -> bytes:
    """The answer to a request outside /api/predict: /metrics, /healthz, /groups/<g> or a
    `GatewayError` (404)."""
    path = client.url.partition(b"?")[0]
    if path.startswith(GROUP_STATS_PREFIX):
        return group_stats_answer(client, method, path)
    return local_answer(method, path, client.ctx.metrics, close=not client.keep_alive)


def authorize_request(client: ClientConnection, route: RouteState, method: bytes) -> bytes | str | None:
    """The slow auth path (signed requests, refusals): the body's expected Content-MD5 for a
    signed request, else None; raises `AuthError` when the request is refused."""
    assert route.creds is not None
    return authorize_client(client, route.creds, route.service, method)
