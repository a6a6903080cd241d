"""Batch lines and shards, table-driven: what a line must hold, how a file splits into shards."""

from __future__ import annotations

import json

import pytest

from openeas.batch.lines import BatchRequest, LineError, error_line, output_line, parse_line, shard_bounds

OK = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"x": 1}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (json.dumps(OK), BatchRequest(3, "a", "POST", "/v1/chat/completions", {"x": 1})),
        (json.dumps({**OK, "method": "post"}), BatchRequest(3, "a", "POST", "/v1/chat/completions", {"x": 1})),
        (json.dumps({k: v for k, v in OK.items() if k != "method"}), BatchRequest(3, "a", "POST", "/v1/chat/completions", {"x": 1})),
        ("   ", None),  # blank lines are skipped, not counted
        ('{"custom_id": "a",', "invalid_json"),
        ("[1, 2]", "invalid_line"),
        (json.dumps({**OK, "custom_id": ""}), "custom_id"),
        (json.dumps({**OK, "url": "v1/chat"}), "url"),
        (json.dumps({**OK, "method": "FETCH"}), "method"),
        (json.dumps({k: v for k, v in OK.items() if k != "body"}), "body"),
    ],
    ids=["ok", "lowercase-method", "default-method", "blank", "not-json", "not-object", "no-custom-id", "relative-url", "bad-method", "no-body"],
)
def test_parse_line(raw: str, expected: object) -> None:
    got = parse_line(3, raw.encode())
    if expected is None or isinstance(expected, BatchRequest):
        assert got == expected
    else:
        assert isinstance(got, LineError) and got.line == 3 and got.message.startswith("line 3: ")
        assert expected in (got.code, got.message.split(": ")[1].split(":")[0])


@pytest.mark.parametrize(
    ("data", "shard_lines", "expected"),
    [
        (b"a\nb\nc\n", 2, [(1, 3, 0, 4), (3, 4, 4, 6)]),  # lines 1-2 = bytes 0..4, line 3 = bytes 4..6
        (b"a\nb\nc", 2, [(1, 3, 0, 4), (3, 4, 4, 5)]),  # no final newline
        (b"a\nb\n", 5, [(1, 3, 0, 4)]),
        (b"", 5, []),
    ],
    ids=["two-shards", "no-final-newline", "one-shard", "empty"],
)
def test_shard_bounds(data: bytes, shard_lines: int, expected: list[tuple[int, int, int, int]]) -> None:
    assert shard_bounds(data, shard_lines) == expected
    assert b"".join(data[s:e] for _, _, s, e in shard_bounds(data, shard_lines)) == data  # nothing lost


def test_output_and_error_lines_are_openai_shaped() -> None:
    req = BatchRequest(1, "c1", "POST", "/x", {})
    out = json.loads(output_line(req, 200, {"ok": True}, "rid"))
    assert out["custom_id"] == "c1" and out["response"] == {"status_code": 200, "request_id": "rid", "body": {"ok": True}}
    assert out["error"] is None and out["id"].startswith("batch_req_")
    err = json.loads(error_line(7, None, "invalid_json", "line 7: not JSON"))
    assert err["line"] == 7 and err["response"] is None and err["error"]["code"] == "invalid_json"
