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

- ``GET ?requestId=<id>``: ``204`` while not ready, else the result
  as the replica answered it (status, body, Content-Type); ``_raw_=false``: EAS's JSON list;
  ``Accept: application/vnd.google.protobuf``: a ``DataFrameList`` (the EAS SDK's ``get``, the
  replica's status in the tags); ``_timeout_=5s`` waits up to that long for it (at most 60 s);
  ``_auto_delete_=true`` deletes it once answered; unknown id ``404``, dead ``502`` with the last
  error, already read and deleted ``410``.
- ``GET ?_watch_=true``: results pushed as they are stored: a WebSocket (the EAS SDK's
  ``watch()``) or server-sent events; ``requestId=<id>``: that one only.
- ``PUT``/``DELETE ?_indexes_=1,2``: delete those results (EAS commit / delete).

Both queues, in `openeas.gateway.asyncq.queueops`: ``GET ?_index_=N`` (get by index, long-poll),
``DELETE ?_trunc_=true&_index_=N`` (truncate), ``DELETE``/``PUT ?_indexes_=`` or ``?requestId=``,
``GET ?_search_=true``, ``POST`` on the sink (put); ``GET ?_watch_=true`` with ``_window_``,
``_index_only_``, ``_auto_commit_`` on either (`openeas.gateway.asyncq.watch.Watch`).

The client connection (`openeas.gateway.http.proxy.ClientConnection`) calls `queue_request` from
``on_headers_complete`` for an async route and `queue_body` from ``on_message_complete`` when the
request waited for its body; both act on the request's `openeas.gateway.http.exchange.Exchange`
through its methods (its body buffer, its answer, its signed body).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from openeas.gateway.asyncq import queueops as ops
from openeas.gateway.asyncq.qhttp import (
    REQUEST_ID_HEADER,
    flag,
    int_param,
    json_answer,
    no_content,
    parse_timeout,
    queues_of,
    request_headers,
    respond,
    respond_error,
    run,
    send,
    unknown,
)
from openeas.gateway.asyncq.watch import SSE, SSE_HEAD, WEBSOCKET, LongPoll, Watch
from openeas.gateway.asyncq.wsframe import handshake
from openeas.gateway.auth import AuthError
from openeas.gateway.errors import GatewayError, body_too_large
from openeas.queue.model import Message, Result, State, request_status

if TYPE_CHECKING:
    from openeas.gateway.asyncq.queues import AsyncQueues
    from openeas.gateway.http.exchange import Exchange

RETRY_AFTER_S = 1  # a client refused with 429 (queue full) is told to wait this many seconds
DEAD_LIST_MAX = 1000  # dead letters listed at most per GET
# Request headers not stored with a queued request (the gateway's own or one hop's).
_NOT_STORED = frozenset({"content-length", "host", "expect", "accept-encoding"})


@dataclass(slots=True)
class Pending:
    """An async request waiting for its body (an enqueue or a re-drive)."""

    kind: str  # "enqueue" | "redrive"
    method: str
    path: str  # the replica's path and query (tags), queue parameters removed
    priority: int
    tags: dict[str, str] = field(default_factory=dict)


# --- called by the client connection -----------------------------------------------------------------


def queue_request(ex: Exchange, method: bytes, upstream_path: bytes) -> None:
    """A request to an async service, its head complete: answer it, or wait for its body."""
    try:
        _route(ex, method.decode("latin-1"), upstream_path.decode("latin-1"))
    except GatewayError as e:
        ex.client.fail(e)


def _route(ex: Exchange, method: str, upstream_path: str) -> None:
    route = ex.route
    assert route is not None
    service = route.service
    path, _, query = upstream_path.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    queues = queues_of(ex)
    sink = path == "/sink" or path.startswith("/sink/")
    if method in ("GET", "HEAD"):
        if flag(params, "_watch_"):
            _watch(ex, queues, service, params, sink=sink)
        elif flag(params, "_attrs_"):
            attrs = ops.sink_attributes if sink else _attributes
            run(ex, attrs(ex, queues, service))
        elif flag(params, "_search_"):
            run(ex, ops.search(ex, queues, service, params, sink=sink))
        elif sink:
            run(ex, _get_result(ex, queues, service, params))
        elif flag(params, "_dead_"):
            run(ex, _dead(ex, queues, service, params))
        elif "_index_" in params or "_length_" in params or ops.answer_format(ex, params) == "protobuf":
            run(ex, ops.input_get(ex, queues, service, params))  # the EAS SDK's get()
        elif "requestId" in params:
            run(ex, _status(ex, queues, service, params["requestId"]))
        else:
            raise GatewayError(
                400,
                "async_service",
                f"service '{service}' is async: send requests with POST (answered with a request id), "
                f"read results with GET /api/predict/{service}/sink?requestId=<id>; GET here takes "
                "_attrs_=true, requestId=<id>, _index_=<i>, _search_=true, _watch_=true or _dead_=true",
            )
        return
    if method == "DELETE" and flag(params, "_trunc_"):
        run(ex, ops.truncate(ex, queues, service, params, sink=sink))
        return
    if method == "DELETE" or (method == "PUT" and "_indexes_" in params):
        if "_indexes_" not in params and "requestId" not in params:
            raise GatewayError(
                400,
                "invalid_parameter",
                f"DELETE on the {'sink' if sink else 'queue'} of '{service}' names what to delete: "
                "_indexes_=<i,j>, requestId=<id>, or _trunc_=true&_index_=<i> (everything below i)",
            )
        run(ex, ops.delete(ex, queues, service, params, sink=sink))
        return
    priority = int_param(params, "_priority_", 0)
    if priority not in (0, 1):
        raise GatewayError(400, "invalid_parameter", f"_priority_={priority}: must be 0 or 1")
    tags = {k: v for k, v in params.items() if not k.startswith("_") and k != "requestId"}
    replica_path = path + ("?" + urlencode(tags) if tags else "")
    kind = "sink" if sink else "redrive" if flag(params, "_redrive_") else "enqueue"
    ex.wait_body(Pending(kind, method, replica_path, priority, tags))  # the body collects there


def queue_body(ex: Exchange, chunked: bool) -> None:
    """The whole body of a request waiting in `queue_request` arrived."""
    pending, body = ex.take_body(chunked)
    signed = ex.take_signed()
    if signed is not None:
        try:
            signed.verify()
        except AuthError as e:
            ex.client.fail(e)
            return
    try:
        queues = queues_of(ex)
        if pending.kind == "redrive":
            run(ex, _redrive(ex, queues, body))
        elif pending.kind == "sink":
            assert ex.route is not None
            run(ex, ops.sink_put(ex, queues, ex.route.service, body, pending.tags))
        else:
            _enqueue(ex, queues, pending, body)
    except GatewayError as e:
        ex.client.fail(e)


# --- the input queue --------------------------------------------------------------------------------


def _enqueue(ex: Exchange, queues: AsyncQueues, pending: Pending, body: bytes) -> None:
    route = ex.route
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
    headers = request_headers(ex)
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
    seq = ex.client.request_seq

    def done(f: asyncio.Future[int]) -> None:
        error = f.exception()
        if error is not None:
            respond_error(
                ex, seq, GatewayError(503, "queue_unavailable", f"the request was not queued: {error}")
            )
            return
        queues.enqueued(service)
        extra = REQUEST_ID_HEADER + b": " + msg.request_id.encode() + b"\r\n"
        respond(ex, seq, 200, str(msg.index).encode(), b"text/plain", extra)

    asyncio.ensure_future(queues.backend.enqueue(msg)).add_done_callback(done)


async def _attributes(ex: Exchange, queues: AsyncQueues, service: str) -> bytes:
    route = ex.route
    assert route is not None and route.queue is not None
    attrs = await queues.backend.attributes(service, route.queue.max_length, time.time())
    return json_answer(200, attrs.eas_dict(consumers=len(route.upstreams)), ex)


async def _status(ex: Exchange, queues: AsyncQueues, service: str, request_id: str) -> bytes:
    state, result = await queues.backend.lookup(service, request_id)
    if state is None:
        raise unknown(service, request_id)
    body: dict[str, Any] = {"requestId": request_id, "status": request_status(state)}
    if result is not None:
        body.update(index=result.index, attempts=result.attempts, resultStatus=result.status)
    return json_answer(200, body, ex)


async def _dead(ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str]) -> bytes:
    limit = min(max(int_param(params, "_length_", DEAD_LIST_MAX), 1), DEAD_LIST_MAX)
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
    return json_answer(200, items, ex)


async def _redrive(ex: Exchange, queues: AsyncQueues, body: bytes) -> bytes:
    route = ex.route
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
    return json_answer(200, {"redriven": n}, ex)


# --- the sink ---------------------------------------------------------------------------------------------


async def _get_result(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str]
) -> bytes | None:
    fmt = ops.answer_format(ex, params)
    auto_delete = flag(params, "_auto_delete_")
    timeout_s = parse_timeout(params["_timeout_"]) if params.get("_timeout_") else 0.0
    request_id = params.get("requestId")
    if request_id is None:
        return await ops.sink_get_by_index(ex, queues, service, params)
    state, result = await queues.backend.lookup(service, request_id)
    key = request_id
    if result is not None:
        return await ops.results_response(ex, queues, service, [result], fmt, auto_delete)
    if state is None:
        raise unknown(service, key)
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
    if timeout_s <= 0:
        return no_content(ex, request_id)
    seq = ex.client.request_seq

    def deliver(result: Result | None) -> None:
        if result is None:
            send(ex, seq, no_content(ex, request_id))
        else:
            run(ex, ops.results_response(ex, queues, service, [result], fmt, auto_delete), seq=seq)

    # Answered a little before the client's own timeout, which the EAS SDK sets to the same value.
    LongPoll(queues, service, request_id, deliver, timeout_s * 0.95)
    return None


def _watch(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str], *, sink: bool
) -> None:
    """Hand the connection over to a `Watch` (WebSocket when asked for, else server-sent events);
    it still counts against the gateway's connection cap until it ends."""
    start = max(int_param(params, "_index_", 0), 0)
    window = max(int_param(params, "_window_", 0), 0)
    websocket = ex.client.upgrade is not None
    key = request_headers(ex).get("sec-websocket-key")
    if websocket and not key:
        raise GatewayError(400, "bad_handshake", "a WebSocket watch needs Sec-WebSocket-Key")
    transport = ex.transport
    ex.record(101 if websocket else 200)
    ctx = ex.client.ctx
    ex.client.hand_over()  # still counted against the connection cap, as a watch
    ctx.watches += 1

    def closed() -> None:
        ctx.watches -= 1

    transport.write(handshake(key.encode("latin-1")) if websocket and key else SSE_HEAD)
    Watch(
        queues,
        service,
        transport,
        mode=WEBSOCKET if websocket else SSE,
        sink=sink,
        start=start,
        request_id=params.get("requestId"),
        auto_commit=flag(params, "_auto_commit_"),
        window=window,
        index_only=flag(params, "_index_only_"),
        on_close=closed,
    )


