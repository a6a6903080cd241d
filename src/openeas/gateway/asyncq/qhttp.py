"""The HTTP side of EAS's queue protocol in the gateway, shared by the input queue and the sink
(`openeas.gateway.asyncq.protocol`, `openeas.gateway.asyncq.queueops`): query parameters, the
request's headers, and answering a client connection from a coroutine (an answer for a request
the client has since given up on, or that was answered otherwise, is dropped)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

from openeas.gateway.errors import GatewayError, plain_response

if TYPE_CHECKING:
    from openeas.gateway.asyncq.queues import AsyncQueues
    from openeas.gateway.http.exchange import Exchange

REQUEST_ID_HEADER = b"X-Eas-Queueservice-Request-Id"
MAX_LONG_POLL_S = 60.0  # longest _timeout_ honoured: a long-poll holds a connection
JSON_TYPE = b"application/json"
_TIMEOUT_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")
_TRUE = ("true", "1", "yes")


def parse_timeout(text: str) -> float:
    """``_timeout_``'s value in seconds: ``5s``, ``500ms``, ``2m`` or a plain number of seconds,
    capped at MAX_LONG_POLL_S; raises `GatewayError` 400 naming the parameter."""
    m = _TIMEOUT_RE.fullmatch(text.strip())
    if m is None:
        raise GatewayError(400, "invalid_parameter", f"_timeout_={text!r}: use seconds like 5s, 500ms or 1m")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    seconds = value / 1000.0 if unit == "ms" else value * 60.0 if unit == "m" else value
    return min(seconds, MAX_LONG_POLL_S)


def flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").strip().lower() in _TRUE


def int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise GatewayError(400, "invalid_parameter", f"{name}={raw!r}: must be an integer") from None


def request_headers(ex: Exchange) -> dict[str, str]:
    """The request's forwarded headers (lowercase names; the head the proxy kept)."""
    h = ex.client.headers
    return {h[i].decode("latin-1").lower(): h[i + 2].decode("latin-1") for i in range(1, len(h) - 3, 4)}


def queues_of(ex: Exchange) -> AsyncQueues:
    queues = ex.client.ctx.queues
    if queues is None:
        raise GatewayError(503, "queue_unavailable", "this gateway has no queue backend for async services")
    return queues


def unknown(service: str, key: str) -> GatewayError:
    return GatewayError(
        404,
        "unknown_request_id",
        f"no request {key} in the queue of '{service}' (never accepted, or its result expired)",
    )


def json_answer(status: int, obj: Any, ex: Exchange) -> bytes:
    return plain_response(status, json.dumps(obj).encode(), JSON_TYPE, close=not ex.client.keep_alive)


def no_content(ex: Exchange, request_id: str | None) -> bytes:
    head = b"HTTP/1.1 204 No Content\r\n"
    if request_id is not None:
        head += REQUEST_ID_HEADER + b": " + request_id.encode() + b"\r\n"
    if not ex.client.keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n"


def run(ex: Exchange, coro: Any, *, seq: int | None = None) -> None:
    """Run one of the async answers above; its bytes (None: it answers later itself) go to the client."""
    seq = ex.client.request_seq if seq is None else seq

    def done(f: asyncio.Future[bytes | None]) -> None:
        error = f.exception()
        if isinstance(error, GatewayError):
            respond_error(ex, seq, error)
        elif error is not None:
            respond_error(ex, seq, GatewayError(503, "queue_unavailable", f"the queue failed: {error}"))
        else:
            response = f.result()
            if response is not None:
                send(ex, seq, response)

    asyncio.ensure_future(coro).add_done_callback(done)


def status_of(response: bytes) -> int:
    return int(response[9:12])


def send(ex: Exchange, seq: int, response: bytes) -> None:
    """Answer request ``seq`` (dropped when the client went away or it was answered otherwise)."""
    ex.respond(seq, response)


def respond(
    ex: Exchange, seq: int, status: int, body: bytes, ctype: bytes, extra: bytes = b""
) -> None:
    send(ex, seq, plain_response(status, body, ctype, close=not ex.client.keep_alive, extra=extra))


def respond_error(ex: Exchange, seq: int, err: GatewayError) -> None:
    ex.respond_error(seq, err)
