"""Batch lines: the OpenAI Batch API's JSONL format, read and written.

An input line is ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}``; ``url`` is the path on the service (what follows ``/api/predict/<svc>``). An
output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error":
null}``; a line that could not be served goes to the errors file as ``{"id", "custom_id",
"line", "response", "error": {"code", "message"}}``. Pure functions, no I/O.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

METHODS = ("POST", "GET", "PUT", "DELETE", "PATCH")


@dataclass(frozen=True)
class BatchRequest:
    line: int  # 1-based line number in the input file
    custom_id: str
    method: str
    url: str  # path on the service, starting with "/"
    body: Any


@dataclass(frozen=True)
class LineError:
    line: int
    custom_id: str | None
    code: str
    message: str


def parse_line(line_no: int, raw: bytes) -> BatchRequest | LineError | None:
    """One input line; None for a blank line (skipped, not counted)."""
    text = raw.strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError as e:
        return LineError(line_no, None, "invalid_json", f"line {line_no}: not JSON ({e})")
    if not isinstance(doc, dict):
        return LineError(line_no, None, "invalid_line", f"line {line_no}: a JSON object is expected")
    cid = doc.get("custom_id")
    custom_id = cid if isinstance(cid, str) and cid else None
    problems = []
    if custom_id is None:
        problems.append("custom_id: a non-empty string is required")
    method = doc.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        problems.append(f"method: one of {', '.join(METHODS)}")
    url = doc.get("url")
    if not isinstance(url, str) or not url.startswith("/"):
        problems.append("url: a path starting with '/' (e.g. /v1/chat/completions) is required")
    if "body" not in doc:
        problems.append("body: required (the request's JSON body)")
    if problems:
        return LineError(line_no, custom_id, "invalid_line", f"line {line_no}: " + "; ".join(problems))
    assert custom_id is not None and isinstance(url, str) and isinstance(method, str)
    return BatchRequest(line_no, custom_id, method.upper(), url, doc["body"])


def _request_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def output_line(req: BatchRequest, status: int, body: Any, request_id: str) -> bytes:
    doc = {
        "id": _request_id(),
        "custom_id": req.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return json.dumps(doc).encode() + b"\n"


def error_line(
    line: int, custom_id: str | None, code: str, message: str, status: int | None = None, body: Any = None
) -> bytes:
    response = None if status is None else {"status_code": status, "body": body}
    doc = {
        "id": _request_id(),
        "custom_id": custom_id,
        "line": line,
        "response": response,
        "error": {"code": code, "message": message},
    }
    return json.dumps(doc).encode() + b"\n"


def cut_shards(lines: Iterable[bytes], shard_lines: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Shards of ``shard_lines`` lines — [(first line number, last line number + 1, start byte,
    end byte)] — and the number of non-blank lines (the requests), in one pass over ``lines``
    (each with its newline, in order: a file read line by line)."""
    bounds = []
    pos, line, requests, in_shard = 0, 1, 0, 0
    start_pos, start_line = 0, 1
    for raw in lines:
        if in_shard == 0:
            start_pos, start_line = pos, line
        pos += len(raw)
        line += 1
        in_shard += 1
        if raw.strip():
            requests += 1
        if in_shard == shard_lines:
            bounds.append((start_line, line, start_pos, pos))
            in_shard = 0
    if in_shard:
        bounds.append((start_line, line, start_pos, pos))
    return bounds, requests


def shard_bounds(data: bytes, shard_lines: int) -> list[tuple[int, int, int, int]]:
    """Split ``data`` (a JSONL file) into shards of ``shard_lines`` lines (``cut_shards``)."""
    return cut_shards(io.BytesIO(data), shard_lines)[0]
