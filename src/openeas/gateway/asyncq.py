"""Owns EAS's async protocol in the gateway: what a request to an async service (``metadata.type:
Async``) does instead of being proxied. docs/async.md is the user's view.

Input queue, ``/api/predict/<svc>[/path]``:

- ``POST`` (any method with a body) enqueues: answered once the request is durable, ``200`` with
  ``X-Eas-Queueservice-Request-Id`` and the queue index as the body; ``?_priority_=1`` goes first;
  other query parameters are the request's tags (echoed with its result) and reach the replica;
  ``413`` over ``queue.source.max_payload_size_kb``, ``429`` + ``Retry-After`` at
  ``queue.source.max_length``, ``400`` for a body that is not the JSON its Content-Type says.
- ``GET ?_attrs_=true``: queue attributes; ``GET ?requestId=<id>``: the request's state;
  ``GET ?_dead_=true``: the dead-letter list; ``POST ?_redrive_=true``: queue dead requests again
  (all, or ``{"requestIds": [...]}``).

Sink, ``/api/predict/<svc>/sink``:

- ``GET ?requestId=<id>`` (or ``?_index_=<queue index>``): ``204`` while not ready, else the result
  as the replica answered it (status, body, Content-Type); ``_raw_=false``: EAS's JSON list;
  ``Accept: application/vnd.google.protobuf``: a ``DataFrameList`` (the EAS SDK's ``get``, the
  replica's status in the tags); ``_timeout_=5s`` waits up to that long for it (at most 60 s);
  ``_auto_delete_=true`` deletes it once answered; unknown id ``404``, dead ``502`` with the last
  error, already read and deleted ``410``.
- ``GET ?_watch_=true``: results pushed as they are stored: a WebSocket (the EAS SDK's
  ``watch()``) or server-sent events; ``requestId=<id>``: that one only.
- ``PUT``/``DELETE ?_indexes_=1,2``: delete those results (EAS commit / delete).

These functions become methods of `openeas.gateway.proxy.ClientConnection` (assigned in its class
body); the proxy calls `queue_request` from ``on_headers_complete`` for an async route and
`queue_body_done` from ``on_message_complete`` when it waited for a body.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from openeas.gateway.auth import AuthError
from openeas.gateway.errors import GatewayError, body_too_large, plain_response
from openeas.gateway.guard import CLOSED, PROXYING
from openeas.gateway.watch import SSE, SSE_HEAD, WEBSOCKET, LongPoll, Watch
from openeas.gateway.wsframe import handshake
from openeas.queue import wire
from openeas.queue.model import Message, Result, State, request_status

if TYPE_CHECKING:
    from openeas.gateway.proxy import ClientConnection
    from openeas.gateway.queues import AsyncQueues

REQUEST_ID_HEADER = b"X-Eas-Queueservice-Request-Id"
MAX_LONG_POLL_S = 60.0  # longest _timeout_ honoured: a long-poll holds a connection
RETRY_AFTER_S = 1  # a client refused with 429 (queue full) is told to wait this many seconds
DEAD_LIST_MAX = 1000  # dead letters listed at most per GET
JSON_TYPE = b"application/json"
# Request headers not stored with a queued request (the gateway's own or one hop's).
_NOT_STORED = frozenset({"content-length", "host", "expect", "accept-encoding"})
_TIMEOUT_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")
_TRUE = ("true", "1", "yes")


@dataclass(slots=True)
class Pending:
    """An async request waiting for its body (an enqueue or a re-drive)."""

    kind: str  # "enqueue" | "redrive"
    method: str
    path: str  # the replica's path and query (tags), queue parameters removed
    priority: int
    tags: dict[str, str] = field(default_factory=dict)


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


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").strip().lower() in _TRUE


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise GatewayError(400, "invalid_parameter", f"{name}={raw!r}: must be an integer") from None


def _headers(client: ClientConnection) -> dict[str, str]:
    """The request's forwarded headers (lowercase names; the head the proxy kept)."""
    h = client.headers
    return {h[i].decode("latin-1").lower(): h[i + 2].decode("latin-1") for i in range(1, len(h) - 3, 4)}


def _queues(client: ClientConnection) -> AsyncQueues:
    queues = client.ctx.queues
    if queues is None:
        raise GatewayError(503, "queue_unavailable", "this gateway has no queue backend for async services")
    return queues


# --- methods of ClientConnection --------------------------------------------------------------------


def queue_request(client: ClientConnection, method: bytes, upstream_path: bytes) -> None:
    """A request to an async service, its head complete: answer it, or wait for its body."""
    try:
        _route(client, method.decode("latin-1"), upstream_path.decode("latin-1"))
    except GatewayError as e:
        client._fail(e)


def _route(client: ClientConnection, method: str, upstream_path: str) -> None:
    route = client.route
    assert route is not None
    service = route.service
    path, _, query = upstream_path.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    queues = _queues(client)
    if path == "/sink" or path.startswith("/sink/"):
        if method == "GET" and _flag(params, "_watch_"):
            _watch(client, queues, service, params)
        elif method == "GET" and _flag(params, "_attrs_"):
            _run(client, _attributes(client, queues, service))
        elif method == "GET":
            _run(client, _get_result(client, queues, service, params))
        elif method in ("PUT", "DELETE") and "_indexes_" in params:
            _run(client, _commit(client, queues, service, params["_indexes_"]))
        else:
            raise GatewayError(
                405,
                "method_not_allowed",
                f"{method} on the sink of async service '{service}': results are read with GET "
                "?requestId=<id> (or _watch_=true) and deleted with PUT/DELETE ?_indexes_=<i,j>",
            )
        return
    if method in ("GET", "HEAD"):
        if _flag(params, "_attrs_"):
            _run(client, _attributes(client, queues, service))
        elif _flag(params, "_dead_"):
            _run(client, _dead(client, queues, service, params))
        elif "requestId" in params:
            _run(client, _status(client, queues, service, params["requestId"]))
        else:
            raise GatewayError(
                400,
                "async_service",
                f"service '{service}' is async: send requests with POST (answered with a request id), "
                f"read results with GET /api/predict/{service}/sink?requestId=<id>; GET here takes "
                "_attrs_=true, requestId=<id> or _dead_=true",
            )
        return
    if method == "DELETE":
        raise GatewayError(405, "method_not_allowed", f"DELETE on the queue of '{service}' is not supported")
    priority = _int_param(params, "_priority_", 0)
    if priority not in (0, 1):
        raise GatewayError(400, "invalid_parameter", f"_priority_={priority}: must be 0 or 1")
    tags = {k: v for k, v in params.items() if not k.startswith("_") and k != "requestId"}
    replica_path = path + ("?" + urlencode(tags) if tags else "")
    kind = "redrive" if _flag(params, "_redrive_") else "enqueue"
    client.queued = Pending(kind, method, replica_path, priority, tags)
    client.waiting = []  # the body collects here (`ClientConnection._send`)


def queue_body_done(client: ClientConnection) -> None:
    """The whole body of a request waiting in `queue_request` arrived."""
    pending = client.queued
    assert pending is not None
    client.queued = None
    waiting = client.waiting or []
    client.waiting = None
    # A chunked body was framed for a replica as it came: [size line, data, CRLF] per chunk.
    body = b"".join(waiting[1::3] if client.chunked else waiting)
    signed = client.signed_body
    if signed is not None:
        client.signed_body = None
        try:
            signed.verify()
        except AuthError as e:
            client._fail(e)
            return
    try:
        queues = _queues(client)
        if pending.kind == "redrive":
            _run(client, _redrive(client, queues, body))
        else:
            _enqueue(client, queues, pending, body)
    except GatewayError as e:
        client._fail(e)


# --- the input queue --------------------------------------------------------------------------------


def _enqueue(client: ClientConnection, queues: AsyncQueues, pending: Pending, body: bytes) -> None:
    route = client.route
    assert route is not None and route.queue is not None
    settings = route.queue
    service = route.service
    counters = queues.counters_of(service)
    if len(body) > settings.max_payload_bytes:
        counters.reject("too_large")
        raise body_too_large(settings.max_payload_bytes, service)
    if counters.length >= settings.max_length:
        counters.reject("full")
        raise GatewayError(
            429,
            "queue_full",
            f"the queue of service '{service}' holds {settings.max_length} requests "
            f"(queue.source.max_length); retry after {RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
        )
    headers = _headers(client)
    ctype = headers.get("content-type", "")
    if "json" in ctype.lower():
        try:
            json.loads(body)
        except ValueError as e:
            counters.reject("invalid_json")
            where = (
                f": {e.msg} at line {e.lineno} column {e.colno}"
                if isinstance(e, json.JSONDecodeError)
                else ""
            )
            raise GatewayError(
                400,
                "invalid_json",
                f"the request body is not valid JSON{where} (Content-Type: {ctype}); nothing was queued",
            ) from None
    msg = Message(
        service=service,
        request_id=str(uuid.uuid4()),
        method=pending.method,
        path=pending.path,
        headers=[(k, v) for k, v in headers.items() if k not in _NOT_STORED],
        body=body,
        priority=pending.priority,
        enqueued_at=time.time(),
        tags=pending.tags,
    )
    seq = client.request_seq

    def done(f: asyncio.Future[int]) -> None:
        error = f.exception()
        if error is not None:
            _respond_error(
                client, seq, GatewayError(503, "queue_unavailable", f"the request was not queued: {error}")
            )
            return
        queues.enqueued(service)
        extra = REQUEST_ID_HEADER + b": " + msg.request_id.encode() + b"\r\n"
        _respond(client, seq, 200, str(msg.index).encode(), b"text/plain", extra)

    asyncio.ensure_future(queues.backend.enqueue(msg)).add_done_callback(done)


async def _attributes(client: ClientConnection, queues: AsyncQueues, service: str) -> bytes:
    route = client.route
    assert route is not None and route.queue is not None
    attrs = await queues.backend.attributes(service, route.queue.max_length, time.time())
    return _json(200, attrs.eas_dict(consumers=len(route.upstreams)), client)


async def _status(client: ClientConnection, queues: AsyncQueues, service: str, request_id: str) -> bytes:
    state, result = await queues.backend.lookup(service, request_id)
    if state is None:
        raise _unknown(service, request_id)
    body: dict[str, Any] = {"requestId": request_id, "status": request_status(state)}
    if result is not None:
        body.update(index=result.index, attempts=result.attempts, resultStatus=result.status)
    return _json(200, body, client)


async def _dead(client: ClientConnection, queues: AsyncQueues, service: str, params: dict[str, str]) -> bytes:
    limit = min(max(_int_param(params, "_length_", DEAD_LIST_MAX), 1), DEAD_LIST_MAX)
    dead = await queues.backend.dead_letters(service, limit)
    items = [
        {
            "requestId": d.request_id,
            "index": d.index,
            "attempts": d.attempts,
            "lastError": d.last_error,
            "enqueuedAt": d.enqueued_at,
        }
        for d in dead
    ]
    return _json(200, items, client)


async def _redrive(client: ClientConnection, queues: AsyncQueues, body: bytes) -> bytes:
    route = client.route
    assert route is not None
    ids: list[str] | None = None
    if body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("requestIds"), list)
            or not all(isinstance(r, str) for r in doc["requestIds"])
        ):
            raise GatewayError(
                400,
                "invalid_body",
                'a re-drive body is empty (all dead requests) or {"requestIds": ["<id>", ...]}',
            )
        ids = doc["requestIds"]
    n = await queues.backend.redrive(route.service, ids)
    queues.dispatcher.wake(route.service)
    return _json(200, {"redriven": n}, client)


# --- the sink ---------------------------------------------------------------------------------------------


def _format(client: ClientConnection, params: dict[str, str]) -> str:
    accept = _headers(client).get("accept", "")
    if wire.PROTOBUF in accept:
        return "protobuf"
    if params.get("_raw_", "true").strip().lower() in ("false", "0", "no"):
        return "json"
    return "raw"


async def _get_result(
    client: ClientConnection, queues: AsyncQueues, service: str, params: dict[str, str]
) -> bytes | None:
    fmt = _format(client, params)
    auto_delete = _flag(params, "_auto_delete_")
    timeout_s = parse_timeout(params["_timeout_"]) if params.get("_timeout_") else 0.0
    request_id = params.get("requestId")
    if request_id is None:
        index = _int_param(params, "_index_", 0)
        if index <= 0:
            length = min(max(_int_param(params, "_length_", 1), 1), 100)
            results = await queues.backend.results_after(service, 0, length)
            if not results:
                return _no_content(client, None)
            return await _results_response(client, queues, service, results, fmt, auto_delete)
        state, result = await queues.backend.lookup_index(service, index)
        key = f"index {index}"
    else:
        state, result = await queues.backend.lookup(service, request_id)
        key = request_id
    if result is not None:
        return await _results_response(client, queues, service, [result], fmt, auto_delete)
    if state is None:
        raise _unknown(service, key)
    if state is State.READ:
        raise GatewayError(
            410,
            "result_deleted",
            f"the result of request {key} of '{service}' was read with _auto_delete_ and deleted",
        )
    if state is State.DEAD:
        raise GatewayError(
            502,
            "dead_letter",
            f"request {key} of '{service}' failed max_delivery attempts and is in the dead-letter list "
            f"(GET /api/predict/{service}?_dead_=true shows its last error; "
            "POST ?_redrive_=true queues it again)",
        )
    if timeout_s <= 0 or request_id is None:
        return _no_content(client, request_id)
    seq = client.request_seq

    def deliver(result: Result | None) -> None:
        if result is None:
            _send(client, seq, _no_content(client, request_id))
        else:
            _run(client, _results_response(client, queues, service, [result], fmt, auto_delete), seq=seq)

    # Answered a little before the client's own timeout, which the EAS SDK sets to the same value.
    LongPoll(queues, service, request_id, deliver, timeout_s * 0.95)
    return None


async def _results_response(
    client: ClientConnection,
    queues: AsyncQueues,
    service: str,
    results: list[Result],
    fmt: str,
    auto_delete: bool,
) -> bytes:
    queues.counters_of(service).results_served += len(results)
    if auto_delete:
        await queues.backend.mark_read(service, [r.request_id for r in results])
    close = not client.keep_alive
    if fmt == "protobuf":
        return plain_response(200, wire.dataframe_list(results), wire.PROTOBUF.encode(), close=close)
    if fmt == "json":
        return plain_response(200, wire.results_json(results), JSON_TYPE, close=close)
    r = results[0]
    extra = REQUEST_ID_HEADER + b": " + r.request_id.encode() + b"\r\n"
    for k, v in r.headers:
        if k.lower() != "content-type":
            extra += k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
    return plain_response(r.status, r.body, r.content_type.encode("latin-1"), close=close, extra=extra)


async def _commit(client: ClientConnection, queues: AsyncQueues, service: str, indexes: str) -> bytes:
    try:
        wanted = [int(i) for i in indexes.split(",") if i.strip()]
    except ValueError:
        raise GatewayError(
            400, "invalid_parameter", f"_indexes_={indexes!r}: comma-separated integers"
        ) from None
    ids = []
    for index in wanted:
        _, result = await queues.backend.lookup_index(service, index)
        if result is not None:
            ids.append(result.request_id)
    await queues.backend.mark_read(service, ids)
    return plain_response(200, b"OK", b"text/plain", close=not client.keep_alive)


def _watch(client: ClientConnection, queues: AsyncQueues, service: str, params: dict[str, str]) -> None:
    """Hand the connection over to a `Watch` (WebSocket when asked for, else server-sent events)."""
    after = max(_int_param(params, "_index_", 0), 0)
    auto_commit = _flag(params, "_auto_commit_")
    websocket = client.upgrade is not None
    key = _headers(client).get("sec-websocket-key")
    if websocket and not key:
        raise GatewayError(400, "bad_handshake", "a WebSocket watch needs Sec-WebSocket-Key")
    transport = client.transport
    client._record(101 if websocket else 200)
    ctx = client.ctx
    if client in ctx.connections:
        ctx.connections.remove(client)
        ctx.metrics.connections -= 1
    client.request_seq += 1
    client._clear_timer()
    client.phase = CLOSED
    transport.write(handshake(key.encode("latin-1")) if websocket and key else SSE_HEAD)
    Watch(
        queues,
        service,
        transport,
        mode=WEBSOCKET if websocket else SSE,
        after=after,
        request_id=params.get("requestId"),
        auto_commit=auto_commit,
    )


# --- answering -----------------------------------------------------------------------------------------


def _unknown(service: str, key: str) -> GatewayError:
    return GatewayError(
        404,
        "unknown_request_id",
        f"no request {key} in the queue of '{service}' (never accepted, or its result expired)",
    )


def _json(status: int, obj: Any, client: ClientConnection) -> bytes:
    return plain_response(status, json.dumps(obj).encode(), JSON_TYPE, close=not client.keep_alive)


def _no_content(client: ClientConnection, request_id: str | None) -> bytes:
    head = b"HTTP/1.1 204 No Content\r\n"
    if request_id is not None:
        head += REQUEST_ID_HEADER + b": " + request_id.encode() + b"\r\n"
    if not client.keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n"


def _run(client: ClientConnection, coro: Any, *, seq: int | None = None) -> None:
    """Run one of the async answers above; its bytes (None: it answers later itself) go to the client."""
    seq = client.request_seq if seq is None else seq

    def done(f: asyncio.Future[bytes | None]) -> None:
        error = f.exception()
        if isinstance(error, GatewayError):
            _respond_error(client, seq, error)
        elif error is not None:
            _respond_error(client, seq, GatewayError(503, "queue_unavailable", f"the queue failed: {error}"))
        else:
            response = f.result()
            if response is not None:
                _send(client, seq, response)

    asyncio.ensure_future(coro).add_done_callback(done)


def _status_of(response: bytes) -> int:
    return int(response[9:12])


def _send(client: ClientConnection, seq: int, response: bytes) -> None:
    if seq != client.request_seq or client.phase is not PROXYING:
        return  # the client went away, or this request was answered otherwise
    client._record(_status_of(response))
    client.transport.write(response)
    client._answered()


def _respond(
    client: ClientConnection, seq: int, status: int, body: bytes, ctype: bytes, extra: bytes = b""
) -> None:
    _send(client, seq, plain_response(status, body, ctype, close=not client.keep_alive, extra=extra))


def _respond_error(client: ClientConnection, seq: int, err: GatewayError) -> None:
    if seq != client.request_seq or client.phase is not PROXYING:
        return
    client._fail(err)
