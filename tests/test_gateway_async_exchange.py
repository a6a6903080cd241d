"""EAS's async-queue protocol in the gateway, without sockets: real client connections on the
FakeLoop harness (tests/fakeloop.py) in front of a real SQLite queue on a tmp file. The queue's
futures need an asyncio loop to complete on, so each test runs one (no socket is opened); the
connection's own timers stay on the FakeLoop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from openeas.gateway.asyncq.queues import AsyncQueues
from openeas.gateway.http.guard import IDLE
from openeas.kernel.queue import QueueSettings
from openeas.queue.model import Result, State
from openeas.queue.sqlite import SqliteQueue
from tests.fakeloop import Client, Gateway, error, route

SVC = "asvc"
MAX_PAYLOAD = 64  # bytes: the route's queue.source.max_payload_size_kb, small to test the 413


def async_gateway(tmp_path: Path) -> tuple[Gateway, SqliteQueue]:
    gw = Gateway(route("a", service=SVC, queue=QueueSettings(max_payload_bytes=MAX_PAYLOAD)))
    backend = SqliteQueue(tmp_path / "queue.db")
    gw.ctx.queues = AsyncQueues(backend, consumer="test")
    return gw, backend


async def answer(gw: Gateway, client: Client, request: bytes) -> bytes:
    """Send ``request`` and wait (at most 5 s, real time) until the connection answered it."""
    client.send(request)
    for _ in range(1000):
        gw.loop.run_ready()
        if client.conn.phase is IDLE and client.transport.data:
            return client.received()
        await asyncio.sleep(0.005)
    raise AssertionError(f"no answer; got {bytes(client.transport.data)!r}")


def post(body: bytes, path: str = f"/api/predict/{SVC}", ctype: bytes = b"application/json") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (path.encode(), ctype, len(body)) + body


def get(target: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target.encode()


ASYNC_SERVICE_MESSAGE = (
    f"service '{SVC}' is async: send requests with POST (answered with a request id), read results "
    f"with GET /api/predict/{SVC}/sink?requestId=<id>; GET here takes _attrs_=true, requestId=<id>, "
    "_index_=<i>, _search_=true, _watch_=true or _dead_=true"
)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(
            post(b'{"x": '),
            error(
                400,
                "invalid_json",
                "the request body is not valid JSON: Expecting value at line 1 column 7 "
                "(Content-Type: application/json); nothing was queued",
            ),
            id="invalid-json",
        ),
        pytest.param(
            post(b"x" * (MAX_PAYLOAD + 1), ctype=b"text/plain"),
            error(413, "body_too_large", f"request body exceeds {MAX_PAYLOAD} bytes, the limit of service '{SVC}'"),
            id="payload-over-limit",
        ),
        pytest.param(get(f"/api/predict/{SVC}"), error(400, "async_service", ASYNC_SERVICE_MESSAGE), id="bare-get"),
        pytest.param(
            get(f"/api/predict/{SVC}?requestId=nope"),
            error(
                404,
                "unknown_request_id",
                f"no request nope in the queue of '{SVC}' (never accepted, or its result expired)",
            ),
            id="unknown-request-id",
        ),
        pytest.param(
            post(b"{}", path=f"/api/predict/{SVC}?_priority_=2"),
            error(400, "invalid_parameter", "_priority_=2: must be 0 or 1"),
            id="priority-out-of-range",
        ),
    ],
)
def test_refusals_name_what_was_wrong(tmp_path: Path, request_bytes: bytes, expected: bytes) -> None:
    async def main() -> bytes:
        gw, backend = async_gateway(tmp_path)
        try:
            return await answer(gw, gw.client(), request_bytes)
        finally:
            await backend.close()

    assert asyncio.run(main()) == expected


def test_enqueue_answers_the_request_id_and_the_queue_holds_it(tmp_path: Path) -> None:
    async def main() -> None:
        gw, backend = async_gateway(tmp_path)
        try:
            client = gw.client()
            got = await answer(gw, client, post(b'{"x": 1}', path=f"/api/predict/{SVC}/run?tag=7"))
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK"), got
            request_id = next(
                line.split(b": ", 1)[1].decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-eas-queueservice-request-id")
            )
            assert body == b"1"  # the first request's queue index
            state, result = await backend.lookup(SVC, request_id)
            assert (state, result) == (State.QUEUED, None)
            msg = await backend.find_message(SVC, request_id)
            assert msg is not None and (msg.path, msg.body, msg.tags) == ("/run?tag=7", b'{"x": 1}', {"tag": "7"})
            assert gw.ctx.queues is not None and gw.ctx.queues.counters_of(SVC).enqueued == 1
            # Its status, then its result from the sink once the replica's answer is stored.
            status = await answer(gw, client, get(f"/api/predict/{SVC}?requestId={request_id}"))
            assert json.loads(status.partition(b"\r\n\r\n")[2])["requestId"] == request_id
            pending = await answer(gw, client, get(f"/api/predict/{SVC}/sink?requestId={request_id}"))
            assert pending.startswith(b"HTTP/1.1 204 No Content\r\n"), pending
            now = time.time()
            await backend.put_result(
                Result(SVC, request_id, 1, 200, [("Content-Type", "text/plain")], b"done", 1, now, now)
            )
            done = await answer(gw, client, get(f"/api/predict/{SVC}/sink?requestId={request_id}"))
            assert done.startswith(b"HTTP/1.1 200 OK\r\n") and done.endswith(b"\r\n\r\ndone"), done
            assert gw.codes(SVC) == {200: 3, 204: 1}
        finally:
            await backend.close()

    asyncio.run(main())


def test_a_request_abandoned_before_the_queue_answers_gets_no_answer(tmp_path: Path) -> None:
    async def main() -> None:
        gw, backend = async_gateway(tmp_path)
        try:
            client = gw.client()
            client.send(post(b'{"x": 1}'))
            client.transport.close()  # the client goes away before the enqueue is durable
            gw.loop.run_ready()
            for _ in range(100):
                await asyncio.sleep(0.005)
                gw.loop.run_ready()
            assert bytes(client.transport.data) == b""
            assert gw.codes(SVC) == {499: 1}
        finally:
            await backend.close()

    asyncio.run(main())
