"""Pure pieces of async mode, table-driven: what an attempt's answer means, how claimed requests
spread over replicas, ``_timeout_`` parsing, the wake-from-zero choice, the spec's queue block,
the EAS wire formats (decoded with the EAS SDK's own protobuf classes) and WebSocket frames."""

from __future__ import annotations

import json
import os
import struct

import pytest
from eas_prediction.queue_client import DataFrameCodec, DataFrameListCodec

from openeas.autoscaler.activation import AsyncService, services_to_wake
from openeas.gateway.asyncq.protocol import parse_timeout
from openeas.gateway.asyncq.wsframe import BINARY, CLOSE, PING, FrameError, FrameReader, accept_key, frame
from openeas.gateway.errors import GatewayError
from openeas.kernel.queue import QueueSettings
from openeas.kernel.routing import RouteSettings
from openeas.queue import wire
from openeas.queue.dispatcher import Outcome, assign, attempt_outcome
from openeas.queue.model import Backlog, Message, Result
from openeas.spec import parse_spec
from openeas.store.routing import route_settings
from tests.harness import service_spec


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.STORE),
        (201, Outcome.STORE),
        (400, Outcome.STORE),  # the request's own fault: retrying cannot help, the client sees it
        (404, Outcome.STORE),
        (429, Outcome.RETRY),  # the replica is overloaded: another attempt later
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (None, Outcome.RETRY),  # no answer: refused, died, timed out
    ],
    ids=["200", "201", "400", "404", "429", "500", "503", "no-answer"],
)
def test_attempt_outcome(status: int | None, expected: Outcome) -> None:
    assert attempt_outcome(status) is expected


@pytest.mark.parametrize(
    ("free", "n", "expected"),
    [
        ({"a": 2, "b": 2}, 3, ["a", "b", "a"]),  # most free slots first; ties: the first one
        ({"a": 1, "b": 3}, 3, ["b", "b", "a"]),  # b 3→2, then 2 > 1 → b again, then a=1 vs b=1 → a
        ({"a": 1}, 4, ["a"]),  # never more than the free slots
        ({"a": 0, "b": 0}, 2, []),
        ({}, 2, []),
    ],
    ids=["ties", "uneven", "cap", "full", "no-replica"],
)
def test_assign(free: dict[str, int], n: int, expected: list[str]) -> None:
    assert assign(free, n) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), ("2", 2.0), ("1m", 60.0), ("0.25s", 0.25), ("10m", 60.0)],
    ids=["s", "ms", "bare", "minute", "fraction", "capped-at-60"],
)
def test_parse_timeout(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "soon"], ids=["empty", "unit", "negative", "word"])
def test_parse_timeout_rejects(text: str) -> None:
    with pytest.raises(GatewayError) as e:
        parse_timeout(text)
    assert e.value.status == 400 and "_timeout_" in e.value.message


@pytest.mark.parametrize(
    ("service", "backlog", "wake"),
    [
        (AsyncService("a", True, 0), Backlog(3, 0), True),
        (AsyncService("a", True, 0), Backlog(0, 1), True),  # in flight on a replica being removed
        (AsyncService("a", True, 0), Backlog(0, 0), False),
        (AsyncService("a", True, 2), Backlog(9, 0), False),  # already has replicas: the autoscaler's call
        (AsyncService("a", False, 0), Backlog(9, 0), False),  # stopped: never started by a backlog
        (AsyncService("a", True, 0), None, False),  # no data is not a backlog
    ],
    ids=["queued", "in-flight", "empty", "has-replicas", "stopped", "no-data"],
)
def test_services_to_wake(service: AsyncService, backlog: Backlog | None, wake: bool) -> None:
    backlogs = {} if backlog is None else {service.name: backlog}
    assert services_to_wake([service], backlogs) == (["a"] if wake else [])


def test_queue_block_and_defaults_reach_the_route_record() -> None:
    sync = route_settings(parse_spec(service_spec("s")))
    assert sync.queue is None
    spec = service_spec("a")
    spec["metadata"]["type"] = "Async"
    spec["metadata"]["rpc"] = {"worker_threads": 3, "keepalive": 20000}
    assert route_settings(parse_spec(spec)).queue == QueueSettings(window=3, attempt_timeout_s=20.0)
    spec["queue"] = {
        "max_delivery": 2,
        "window": 7,
        "result_ttl_s": 60,
        "source": {"max_length": 50, "max_payload_size_kb": 4},
        "sink": {"max_payload_size_kb": 8},
        "cpu": 1,  # EAS's queue resources: kept, unused
    }
    q = route_settings(parse_spec(spec)).queue
    # 4 KiB = 4096 bytes, 8 KiB = 8192 bytes
    assert q == QueueSettings(2, 7, 50, 4096, 8192, 60.0, 20.0)
    record = route_settings(parse_spec(spec)).to_dict()
    assert RouteSettings.from_dict(json.loads(json.dumps(record))).queue == q


def test_queue_block_is_validated_by_name() -> None:
    spec = service_spec("a")
    spec["metadata"]["type"] = "Async"
    spec["queue"] = {"max_delivery": 0}
    with pytest.raises(Exception) as e:
        parse_spec(spec)
    assert "queue.max_delivery" in str(e.value)


def _result(**kw: object) -> Result:
    base = dict(
        service="s", request_id="r-1", index=7, status=200, headers=[("Content-Type", "application/json")],
        body=b'{"a":1}', attempts=1, enqueued_at=1.5, finished_at=2.25, sink_index=3, tags={"user": "u1"},
    )
    base.update(kw)
    return Result(**base)  # type: ignore[arg-type]


def test_protobuf_frames_decode_with_the_eas_sdk() -> None:
    one, two = _result(), _result(request_id="r-2", sink_index=300, status=500, body=bytes(range(256)) * 3)
    frames = [wire.result_frame(one), wire.result_frame(two)]
    decoded = DataFrameListCodec.decode(wire.dataframe_list(frames)).get_list()
    assert [d.index for d in decoded] == [3, 300]  # the sink index; 300 needs a two-byte varint
    assert decoded[0].data == b'{"a":1}' and decoded[1].data == bytes(range(256)) * 3
    assert dict(decoded[0].tags) == {
        "user": "u1", "requestId": "r-1", "status": "200", "ts@source": "1500", "ts@sink": "2250"
    }
    assert decoded[1].tags["status"] == "500" and decoded[1].message == "status 500"
    assert DataFrameCodec.decode(wire.result_frame(one)).tags["requestId"] == "r-1"
    assert DataFrameListCodec.decode(b"").get_list() == []  # a 204's empty body: no result yet
    assert DataFrameCodec.decode(wire.result_frame(one, index_only=True)).data == b""  # _index_only_


def test_a_queued_request_as_a_frame_carries_its_queue_index_and_body() -> None:
    m = Message("s", "r-9", "POST", "/", [], b"[1]", 0, 4.0, index=12, tags={"user": "u1"})
    (d,) = DataFrameListCodec.decode(wire.dataframe_list([wire.message_frame(m)])).get_list()
    assert (d.index, d.data, dict(d.tags)) == (12, b"[1]", {"user": "u1", "requestId": "r-9", "ts@source": "4000"})
    assert wire.message_json(m) == {"index": 12, "requestId": "r-9", "tags": dict(d.tags), "data": "[1]"}


def test_json_form_keeps_binary_bodies() -> None:
    text, binary = wire.result_json(_result()), wire.result_json(_result(body=b"\xff\x00"))
    assert text["data"] == '{"a":1}' and "encoding" not in text
    assert binary == {**binary, "data": "/wA=", "encoding": "base64"}


def test_websocket_accept_key_of_rfc6455() -> None:
    # RFC 6455 section 1.3's example handshake
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    return head + mask + body


@pytest.mark.parametrize("size", [0, 125, 126, 70_000], ids=["empty", "7-bit", "16-bit", "64-bit"])
def test_server_frames_have_the_length_forms(size: int) -> None:
    data = frame(BINARY, b"x" * size)
    assert data[0] == 0x80 | BINARY and data.endswith(b"x" * size)
    assert len(data) - size == (2 if size < 126 else 4 if size < 65536 else 10)


def test_frame_reader_unmasks_split_frames_and_refuses_unmasked_ones() -> None:
    reader = FrameReader()
    raw = _masked(PING, b"ping") + _masked(CLOSE, b"\x03\xe8") + _masked(BINARY, b"y" * 300)
    got = [f for i in range(len(raw)) for f in reader.feed(raw[i : i + 1])]  # one byte at a time
    assert got == [(PING, b"ping"), (CLOSE, b"\x03\xe8"), (BINARY, b"y" * 300)]
    with pytest.raises(FrameError):
        list(FrameReader().feed(frame(PING, b"unmasked")))


def test_watch_bounds_are_the_documented_ones() -> None:
    """docs/async.md: a watch ends after an hour, 60 s without a ping, or 8 MiB unread; a get by
    index answers at most 100 entries."""
    from openeas.gateway.asyncq import queueops, watch

    assert (watch.WATCH_MAX_S, watch.WATCH_IDLE_S, watch.WATCH_MAX_BUFFER_BYTES) == (3600.0, 60.0, 8 * 1024 * 1024)
    assert queueops.MAX_LENGTH == 100
