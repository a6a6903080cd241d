"""How results travel to clients in EAS's queue formats.

- **protobuf** (``Accept: application/vnd.google.protobuf``, what the EAS SDK's ``QueueClient``
  asks for): a ``streaming.DataFrameListProto`` holding ``DataFrameProto``s {1: index (uint64),
  2: tags (map<string,string>), 3: data (bytes), 4: message (string)}. Encoded here by hand
  (a few varints and length prefixes): the gateway needs no protobuf runtime, and
  tests/test_queue_wire.py decodes our bytes with the EAS SDK's own generated classes.
- **JSON** (``_raw_=false``): ``[{"index", "requestId", "status", "tags", "data", "message"}]``;
  ``data`` is the body as text when it is UTF-8, else base64 with ``"encoding": "base64"``.
- **SSE** (``watch``): one ``event: result`` per stored result, its data the JSON object above.

A result's tags carry what the EAS SDK reads: ``requestId``, and the inner ``status`` (the
replica's HTTP status code), plus the request's own tags and the timestamps ``ts@source``
(enqueued) and ``ts@sink`` (stored), in milliseconds since the epoch.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from openeas.queue.model import Message, Result

PROTOBUF = "application/vnd.google.protobuf"


def result_tags(r: Result) -> dict[str, str]:
    tags = dict(r.tags)
    tags.update(
        {
            "requestId": r.request_id,
            "status": str(r.status),
            "ts@source": str(int(r.enqueued_at * 1000)),
            "ts@sink": str(int(r.finished_at * 1000)),
        }
    )
    return tags


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def dataframe(index: int, tags: dict[str, str], data: bytes, message: str = "") -> bytes:
    """One ``DataFrameProto``."""
    out = bytearray()
    if index:
        out += _varint(1 << 3 | 0) + _varint(index)
    for k, v in tags.items():
        out += _field(2, _field(1, k.encode()) + _field(2, v.encode()))
    if data:
        out += _field(3, data)
    if message:
        out += _field(4, message.encode())
    return bytes(out)


def result_frame(r: Result, *, index_only: bool = False) -> bytes:
    """A result as one ``DataFrameProto`` (a watch sends these one by one); index = its sink index
    (what ``commit``, ``delete`` and ``get(index=…)`` on the sink take); ``index_only``: no data."""
    data = b"" if index_only else r.body
    return dataframe(r.sink_index, result_tags(r), data, "" if r.status < 400 else f"status {r.status}")


def message_tags(m: Message) -> dict[str, str]:
    tags = dict(m.tags)
    tags.update({"requestId": m.request_id, "ts@source": str(int(m.enqueued_at * 1000))})
    return tags


def message_frame(m: Message, *, index_only: bool = False) -> bytes:
    """A queued request as one ``DataFrameProto`` (the input queue read by index); index = its
    queue index."""
    return dataframe(m.index, message_tags(m), b"" if index_only else m.body)


def dataframe_list(frames: list[bytes]) -> bytes:
    """Frames (`result_frame`, `message_frame`) as a ``DataFrameListProto`` (the EAS SDK's ``get``)."""
    return b"".join(_field(1, f) for f in frames)


def body_json(body: bytes) -> dict[str, str]:
    """``{"data": text}`` when ``body`` is UTF-8, else ``{"data": base64, "encoding": "base64"}``."""
    try:
        return {"data": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(body).decode(), "encoding": "base64"}


def result_json(r: Result) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "index": r.sink_index,  # on the sink every index is a sink index
        "sinkIndex": r.sink_index,  # the order results were stored in (a watch's _index_)
        "sourceIndex": r.index,  # the request's queue index (0: put straight into the sink)
        "requestId": r.request_id,
        "status": r.status,
        "attempts": r.attempts,  # deliveries it took (2+: redelivered after a failure)
        "tags": result_tags(r),
        "message": "" if r.status < 400 else f"status {r.status}",
    }
    return obj | body_json(r.body)


def results_json(results: list[Result]) -> bytes:
    return json.dumps([result_json(r) for r in results]).encode()


def message_json(m: Message) -> dict[str, Any]:
    obj: dict[str, Any] = {"index": m.index, "requestId": m.request_id, "tags": message_tags(m)}
    return obj | body_json(m.body)


def sse_event(r: Result, *, index_only: bool = False) -> bytes:
    obj = result_json(r)
    if index_only:
        obj.pop("data", None)
        obj.pop("encoding", None)
    return b"event: result\nid: %d\ndata: %s\n\n" % (r.sink_index, json.dumps(obj).encode())


def sse_message(m: Message, *, index_only: bool = False) -> bytes:
    obj = message_json(m)
    if index_only:
        obj.pop("data", None)
        obj.pop("encoding", None)
    return b"event: request\nid: %d\ndata: %s\n\n" % (m.index, json.dumps(obj).encode())
