"""Owns the calls of EAS's queue protocol that both queues share (docs/async.md has the table):
``get`` by index or request id (with ``_length_``, a ``_timeout_`` long-poll while nothing is
there yet, ``_auto_delete_``), ``truncate`` (``DELETE ?_trunc_=true&_index_=N``), ``delete`` and
``commit`` (``DELETE``/``PUT ?_indexes_=i,j`` or ``?requestId=``), ``search`` and ``put`` on the sink.

The input queue's entries are the queued requests (index = queue index); the sink's are the
results (index = sink index: the order results were stored in, whether a replica answered or a
ex put them there). `openeas.gateway.asyncq.protocol` routes to these coroutines; each returns the
response bytes (or raises `GatewayError`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from openeas.gateway.asyncq.qhttp import (
    JSON_TYPE,
    REQUEST_ID_HEADER,
    flag,
    int_param,
    json_answer,
    no_content,
    parse_timeout,
    request_headers,
    unknown,
)
from openeas.gateway.errors import GatewayError, body_too_large, plain_response
from openeas.gateway.http.guard import PROXYING
from openeas.queue import wire
from openeas.queue.model import Message, Result, State, request_status

if TYPE_CHECKING:
    from openeas.gateway.asyncq.queues import AsyncQueues
    from openeas.gateway.http.exchange import Exchange

POLL_S = 0.1  # how often a get by index looks again while it long-polls, seconds
MAX_LENGTH = 100  # entries one get answers at most (_length_)
T = TypeVar("T")


def answer_format(ex: Exchange, params: dict[str, str]) -> str:
    """``protobuf`` (Accept: the EAS SDK's), ``json`` (``_raw_=false``) or ``raw``."""
    accept = request_headers(ex).get("accept", "")
    if wire.PROTOBUF in accept:
        return "protobuf"
    if params.get("_raw_", "true").strip().lower() in ("false", "0", "no"):
        return "json"
    return "raw"


def _length(params: dict[str, str]) -> int:
    return min(max(int_param(params, "_length_", 1), 1), MAX_LENGTH)


def _timeout(params: dict[str, str]) -> float:
    # Answered a little before the client's own timeout, which the EAS SDK sets to the same value.
    return parse_timeout(params["_timeout_"]) * 0.95 if params.get("_timeout_") else 0.0


async def wait_for(
    ex: Exchange, fetch: Callable[[], Awaitable[Sequence[T]]], timeout_s: float
) -> Sequence[T]:
    """``fetch()`` until it finds something or ``timeout_s`` passed; empty once the client left
    (nothing is then read, and nothing deleted with ``_auto_delete_``)."""
    loop = asyncio.get_running_loop()
    seq = ex.client.request_seq
    deadline = loop.time() + timeout_s
    while True:
        found = await fetch()
        now = loop.time()
        if found or now >= deadline:
            return found
        await asyncio.sleep(min(POLL_S, deadline - now))
        if seq != ex.client.request_seq or ex.client.phase is not PROXYING:
            return []


async def results_response(
    ex: Exchange,
    queues: AsyncQueues,
    service: str,
    results: list[Result],
    fmt: str,
    auto_delete: bool,
) -> bytes:
    queues.counters_of(service).results_served += len(results)
    if auto_delete:
        await queues.backend.mark_read(service, [r.request_id for r in results])
    close = not ex.client.keep_alive
    if fmt == "protobuf":
        frames = [wire.result_frame(r) for r in results]
        return plain_response(200, wire.dataframe_list(frames), wire.PROTOBUF.encode(), close=close)
    if fmt == "json":
        return plain_response(200, wire.results_json(results), JSON_TYPE, close=close)
    r = results[0]
    extra = REQUEST_ID_HEADER + b": " + r.request_id.encode() + b"\r\n"
    for k, v in r.headers:
        if k.lower() != "content-type":
            extra += k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
    return plain_response(r.status, r.body, r.content_type.encode("latin-1"), close=close, extra=extra)


async def sink_get_by_index(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str]
) -> bytes:
    """Results from sink index ``_index_`` on (0: the oldest unread), up to ``_length_``."""
    index = max(int_param(params, "_index_", 0), 0)
    length = _length(params)
    results = await wait_for(
        ex, lambda: queues.backend.results_after(service, max(index - 1, 0), length), _timeout(params)
    )
    if not results:
        return no_content(ex, None)
    fmt = answer_format(ex, params)
    return await results_response(ex, queues, service, list(results), fmt, flag(params, "_auto_delete_"))


async def input_get(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str]
) -> bytes:
    """Requests still queued or in flight: the one ``requestId`` names, or from queue index
    ``_index_`` on (0: the oldest), up to ``_length_``. ``_auto_delete_=true`` takes them out of
    the queue (a worker that reads the input queue itself): no replica gets them then."""
    backend = queues.backend
    request_id = params.get("requestId")
    index = max(int_param(params, "_index_", 0), 0)
    length = _length(params)

    async def fetch() -> list[Message]:
        if request_id is not None:
            found = await backend.find_message(service, request_id)
            return [] if found is None else [found]
        return await backend.messages_from(service, index, length)

    msgs = list(await wait_for(ex, fetch, _timeout(params)))
    if not msgs:
        return no_content(ex, request_id)
    if flag(params, "_auto_delete_"):
        await backend.delete_messages(service, [m.index for m in msgs])
    close = not ex.client.keep_alive
    if answer_format(ex, params) == "protobuf":
        frames = [wire.message_frame(m) for m in msgs]
        return plain_response(200, wire.dataframe_list(frames), wire.PROTOBUF.encode(), close=close)
    return json_answer(200, [wire.message_json(m) for m in msgs], ex)


def _positive_index(params: dict[str, str], what: str) -> int:
    index = int_param(params, "_index_", 0)
    if index <= 0:
        raise GatewayError(400, "invalid_parameter", f"_index_={params.get('_index_', '')!r}: {what}")
    return index


async def truncate(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str], *, sink: bool
) -> bytes:
    """``DELETE ?_trunc_=true&_index_=N``: every entry below index N is deleted."""
    index = _positive_index(params, "truncate needs the index (≥ 1) below which entries are deleted")
    backend = queues.backend
    n = await (
        backend.truncate_results(service, index) if sink else backend.truncate_messages(service, index)
    )
    return json_answer(200, {"truncated": n, "index": index}, ex)


def parse_indexes(raw: str) -> list[int]:
    try:
        return [int(i) for i in raw.split(",") if i.strip()]
    except ValueError:
        raise GatewayError(400, "invalid_parameter", f"_indexes_={raw!r}: comma-separated integers") from None


async def delete(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str], *, sink: bool
) -> bytes:
    """``DELETE``/``PUT ?_indexes_=i,j`` (EAS delete / commit) or ``?requestId=<id>``: those
    entries are gone; ``OK`` also for indexes that were already gone."""
    backend = queues.backend
    indexes = parse_indexes(params.get("_indexes_", ""))
    request_id = params.get("requestId")
    if sink:
        ids = [] if request_id is None else [request_id]
        for index in indexes:
            _, result = await backend.lookup_sink(service, index)
            if result is not None:
                ids.append(result.request_id)
        await backend.mark_read(service, ids)
    else:
        if request_id is not None:
            found = await backend.find_message(service, request_id)
            indexes += [] if found is None else [found.index]
        await backend.delete_messages(service, indexes)
    return plain_response(200, b"OK", b"text/plain", close=not ex.client.keep_alive)


async def search(
    ex: Exchange, queues: AsyncQueues, service: str, params: dict[str, str], *, sink: bool
) -> bytes:
    """``GET ?_search_=true&_index_=N`` (or ``&requestId=<id>``): where that entry is."""
    backend = queues.backend
    request_id = params.get("requestId")
    index = 0
    if request_id is not None:
        state, result = await backend.lookup(service, request_id)
        key = request_id
    else:
        index = _positive_index(params, "search needs an index ≥ 1 or a requestId")
        state, result = await (
            backend.lookup_sink(service, index) if sink else backend.lookup_index(service, index)
        )
        key = f"index {index}"
    if state is None:
        raise unknown(service, key)
    body: dict[str, Any] = {"index": index, "requestId": request_id, "status": request_status(state)}
    if result is not None:
        body.update(
            index=result.sink_index if sink else result.index,
            requestId=result.request_id,
            sinkIndex=result.sink_index,
            sourceIndex=result.index,
            attempts=result.attempts,
            resultStatus=result.status,
        )
    elif state in (State.QUEUED, State.IN_FLIGHT) and not sink:
        found = (
            await backend.find_message(service, request_id)
            if request_id is not None
            else next(iter(await backend.messages_from(service, index, 1)), None)
        )
        if found is not None and (request_id is not None or found.index == index):
            body.update(index=found.index, requestId=found.request_id, attempts=found.attempts)
    return json_answer(200, body, ex)


async def sink_put(
    ex: Exchange, queues: AsyncQueues, service: str, body: bytes, tags: dict[str, str]
) -> bytes:
    """``POST`` on the sink: ``body`` is stored as a result of its own (status 200, a new request
    id, the next sink index), for watchers and gets as any result."""
    route = ex.route
    assert route is not None and route.queue is not None
    settings = route.queue
    if len(body) > settings.max_result_bytes:
        raise body_too_large(settings.max_result_bytes, service)
    ctype = request_headers(ex).get("content-type", "application/octet-stream")
    now = time.time()
    result = Result(
        service,
        str(uuid.uuid4()),
        0,
        200,
        [("content-type", ctype)],
        body,
        0,
        now,
        now,
        tags=tags,
        ttl_s=settings.result_ttl_s,
    )
    sink_index = await queues.backend.put_result(result)
    queues.on_result(result)
    extra = REQUEST_ID_HEADER + b": " + result.request_id.encode() + b"\r\n"
    return plain_response(
        200, str(sink_index).encode(), b"text/plain", close=not ex.client.keep_alive, extra=extra
    )


async def sink_attributes(ex: Exchange, queues: AsyncQueues, service: str) -> bytes:
    """The sink's attributes under EAS's names: ``stream.length`` (unread results),
    ``stream.lastEntry`` (the highest sink index), as the EAS SDK's ``attributes()`` reads them."""
    route = ex.route
    assert route is not None and route.queue is not None
    unread, last = await queues.backend.sink_stats(service)
    return json_answer(
        200,
        {
            "meta.maxLength": str(route.queue.max_length),
            "stream.length": str(unread),
            "stream.results": str(unread),
            "stream.lastEntry": str(last),
            "consumers.stats.total": str(queues.watchers_of(service)),
        },
        ex,
    )
