"""The warmup file: what ``ServiceSpec.warm_up_data_path`` names, read and checked.

It is JSON Lines, one request per line::

    {"method": "POST", "path": "/v1/completions", "body": {"prompt": "hi"}, "headers": {}, "count": 3}

or a JSON array of the same objects. Defaults: ``method`` POST, ``path`` "/", no body or
headers, ``count`` 1. A ``body`` object or array is sent as JSON (with ``Content-Type:
application/json`` unless the headers say otherwise); a string is sent as is (UTF-8). Blank
lines are skipped. Every problem is a ``ValueError`` naming the file and line; what the file
itself is refused for (not a regular file, too large, a line too long) is a ``UserFileError``
naming the field too, from the one bounded reader of user-named files (``openeas.userfile``).

Pure but for the file read: the API checks a local file before it accepts a spec
(``check_local_warmup``), the replica supervisor loads it (controller/warmup.py sends it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from openeas.kernel.checks import WarmupRequest
from openeas.userfile import UserFileError, capped_lines, check_regular, open_regular

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_COUNT = 100_000  # a typo'd count must not keep a replica warming for hours
MAX_WARMUP_FILE_BYTES = 16 * 1024 * 1024
"""Largest warmup file read (16 MiB): warmup is a few representative requests, not a data set."""
MAX_WARMUP_LINE_BYTES = 1024 * 1024
"""Longest line of a warmup file (1 MiB): one request of JSON Lines."""
_KEYS = frozenset({"method", "path", "body", "headers", "count"})
FIELD = "warm_up_data_path"  # what the errors about the file itself name


# -- loading (pure but for the file read) -----------------------------------------------------------


def load_warmup(path: str | os.PathLike[str]) -> list[WarmupRequest]:
    """Read and parse a warmup file; ``UserFileError`` (a ``ValueError``) if missing, unreadable,
    not a regular file, or larger than ``MAX_WARMUP_FILE_BYTES`` (or a line than
    ``MAX_WARMUP_LINE_BYTES``); ``ValueError`` if malformed.

    The file is read line by line and never more than the cap, so ``/dev/zero`` or a FIFO cannot
    fill memory or block; it blocks the calling thread, so async callers run it in a thread.
    """
    source = os.fspath(path)
    with open_regular(source, FIELD, MAX_WARMUP_FILE_BYTES) as f:
        capped = capped_lines(
            f, source, FIELD, max_bytes=MAX_WARMUP_FILE_BYTES, max_line_bytes=MAX_WARMUP_LINE_BYTES
        )
        lines = list(capped)
    try:
        text = b"".join(lines).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text ({e})") from None
    return parse_warmup(text, source=source)


def check_warmup_file(path: str | os.PathLike[str]) -> None:
    """What ``load_warmup`` would refuse before reading: a missing path, one that is not a
    regular file (a device, FIFO, directory) or one larger than ``MAX_WARMUP_FILE_BYTES``.
    Raises ``UserFileError`` (a ``ValueError``) naming the field and the reason."""
    check_regular(os.fspath(path), FIELD, MAX_WARMUP_FILE_BYTES)


def parse_warmup(text: str, source: str = "<warmup>") -> list[WarmupRequest]:
    """Parse JSON Lines or a JSON array of warmup request objects."""
    if text.lstrip().startswith("["):
        items = _split_json_array(text, source)
    else:
        items = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except RecursionError:
                raise ValueError(f"{source}:{lineno}: JSON nested too deep") from None
            except ValueError as e:
                raise ValueError(
                    f"{source}:{lineno}: not valid JSON ({e}); each line must be one JSON object "
                    "(JSON Lines), or the whole file one JSON array"
                ) from None
    return [_request(obj, f"{source}:{lineno}", lineno) for lineno, obj in items]


def _split_json_array(text: str, source: str) -> list[tuple[int, Any]]:
    """The items of a JSON array with the line each starts on (for error messages)."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip_ws(text.index("[") + 1)
    if i < len(text) and text[i] == "]":
        i = skip_ws(i + 1)
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}:{e.lineno}: not valid JSON: {e.msg}") from None
            except RecursionError:
                raise ValueError(f"{source}:{line_of(i)}: JSON nested too deep") from None
            items.append((line_of(i), obj))
            i = skip_ws(end)
            if i < len(text) and text[i] == ",":
                i = skip_ws(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i = skip_ws(i + 1)
                break
            raise ValueError(f"{source}:{line_of(i)}: expected ',' or ']' in the JSON array")
    if i != len(text):
        raise ValueError(f"{source}:{line_of(i)}: unexpected text after the JSON array")
    return items


def _request(obj: Any, where: str, lineno: int) -> WarmupRequest:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a warmup request must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {sorted(_KEYS)}"
        )

    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ValueError(f"{where}: 'method' must be one of {sorted(METHODS)}, got {method!r}")
    path = obj.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{where}: 'path' must be a string starting with '/', got {path!r}")
    headers = obj.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError(f"{where}: 'headers' must be an object of string values")
    count = obj.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"{where}: 'count' must be an integer within 1..{MAX_COUNT}, got {count!r}")

    raw_body = obj.get("body")
    body: bytes
    if raw_body is None:
        body = b""
    elif isinstance(raw_body, str):
        body = raw_body.encode()
    elif isinstance(raw_body, dict | list):
        try:
            body = json.dumps(raw_body).encode()
        except RecursionError:
            raise ValueError(f"{where}: 'body' nested too deep") from None
        if not any(k.lower() == "content-type" for k in headers):
            headers = {**headers, "Content-Type": "application/json"}
    else:
        raise ValueError(
            f"{where}: 'body' must be an object, an array or a string, got {type(raw_body).__name__}"
        )
    return WarmupRequest(
        method=method.upper(), path=path, body=body, headers=headers, count=count, line=lineno
    )


def check_local_warmup(path: str | None) -> list[str]:
    """A warmup file on this machine (a plain path or ``file://``), checked now: the problems, as
    ``warm_up_data_path: ...`` lines. One in object storage (``oss://``, ``s3://``...) is checked
    when a replica starts (nothing here)."""
    if not path:
        return []
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif "://" in path:
        return []
    try:
        check_warmup_file(path)
    except UserFileError as exc:
        return [str(exc)]  # it names the field
    return []
