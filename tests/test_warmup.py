"""Warmup files (JSON Lines and JSON arrays, errors with line numbers) and run_warmup against
the real test server: in a subprocess gated by --warmup-required, and in-process for failures."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openeas.controller.warmup import (
    MAX_WARMUP_FILE_BYTES,
    MAX_WARMUP_LINE_BYTES,
    check_warmup_file,
    load_warmup,
    parse_warmup,
    run_warmup,
)
from openeas.kernel.checks import WarmupRequest
from openeas.kernel.clock import FakeClock
from openeas.testserver import Knobs, running

JSON = {"Content-Type": "application/json"}

# -- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty-file"),
        pytest.param("\n  \n", [], id="blank-lines-only"),
        pytest.param("{}", [WarmupRequest(line=1)], id="all-defaults"),
        pytest.param(
            '{"method": "post", "path": "/v1/completions", "body": {"prompt": "hi"}, "count": 3}',
            [WarmupRequest("POST", "/v1/completions", b'{"prompt": "hi"}', JSON, 3, line=1)],
            id="jsonl-object-body-gets-json-content-type",
        ),
        pytest.param(
            '\n{"path": "/a", "body": "raw text"}\n\n{"method": "GET", "path": "/health"}\n',
            [
                WarmupRequest("POST", "/a", b"raw text", {}, 1, line=2),
                WarmupRequest("GET", "/health", line=4),
            ],
            id="jsonl-string-body-and-blank-lines",
        ),
        pytest.param(
            '{"body": [1, 2], "headers": {"content-type": "text/plain", "X-A": "1"}}',
            [WarmupRequest(body=b"[1, 2]", headers={"content-type": "text/plain", "X-A": "1"}, line=1)],
            id="explicit-content-type-kept",
        ),
        pytest.param(
            '[\n  {"path": "/x", "count": 2},\n  {\n    "method": "PUT"\n  }\n]\n',
            [WarmupRequest(path="/x", count=2, line=2), WarmupRequest(method="PUT", line=3)],
            id="json-array-with-lines",
        ),
        pytest.param("  [ ]  ", [], id="empty-array"),
    ],
)
def test_parse(text: str, expected: list[WarmupRequest]) -> None:
    assert parse_warmup(text, source="w.jsonl") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{}\n{"path": "/a"\n', r"^w:2: not valid JSON .*JSON Lines", id="jsonl-bad-json-line-2"),
        pytest.param(
            "{}\n\n[1]\n", r"^w:3: a warmup request must be a JSON object, got list", id="jsonl-not-object"
        ),
        pytest.param('{"cout": 3}', r"^w:1: unknown field\(s\) 'cout'", id="typo-field"),
        pytest.param('{"method": "FETCH"}', r"^w:1: 'method' must be one of", id="bad-method"),
        pytest.param(
            '{"path": "v1/x"}', r"^w:1: 'path' must be a string starting with '/'", id="relative-path"
        ),
        pytest.param('{"count": 0}', r"^w:1: 'count' must be an integer within 1\.\.", id="zero-count"),
        pytest.param('{"count": true}', r"^w:1: 'count'", id="bool-count"),
        pytest.param('{"count": 1.5}', r"^w:1: 'count'", id="float-count"),
        pytest.param(
            '{"headers": {"A": 1}}', r"^w:1: 'headers' must be an object of string values", id="int-header"
        ),
        pytest.param('{"headers": ["A"]}', r"^w:1: 'headers'", id="headers-array"),
        pytest.param(
            '{"body": 42}', r"^w:1: 'body' must be an object, an array or a string, got int", id="int-body"
        ),
        pytest.param('[\n {},\n {"count": -1}\n]', r"^w:3: 'count'", id="array-item-line"),
        pytest.param('[\n {},\n {"a": \n]', r"^w:4: not valid JSON", id="array-bad-json"),
        pytest.param("[{} {}]", r"^w:1: expected ',' or ']'", id="array-missing-comma"),
        pytest.param("[{}]\n{}", r"^w:2: unexpected text after the JSON array", id="array-trailing-text"),
        pytest.param("[", r"^w:1: not valid JSON", id="array-unterminated"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_warmup(text, source="w")


def test_load_warmup_reads_the_file(tmp_path: Path) -> None:
    p = tmp_path / "warm.jsonl"
    p.write_text('{"path": "/v1/completions", "body": {"prompt": "x"}}\n{"path": "/"}\n', encoding="utf-8")
    reqs = load_warmup(p)
    assert [(r.path, r.line) for r in reqs] == [("/v1/completions", 1), ("/", 2)]
    p.write_text('{"count": 0}')
    with pytest.raises(ValueError, match=r"warm\.jsonl:1: 'count'"):
        load_warmup(str(p))
    with pytest.raises(ValueError, match=r"warm_up_data_path: no such file: .*missing\.jsonl"):
        load_warmup(tmp_path / "missing.jsonl")


# -- run_warmup against the test server in a subprocess -----------------------------------------------


@pytest.fixture
def warming_server() -> Iterator[str]:
    """`python -m openeas.testserver --warmup-required 3` as a replica would run it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.testserver", "--port", "0", "--warmup-required", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TESTSERVER_MAX_TOKENS_DEFAULT": "2"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://" in line, line
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_warmup_makes_the_test_server_ready(warming_server: str, tmp_path: Path) -> None:
    url = warming_server
    host, port = url.removeprefix("http://").rsplit(":", 1)
    warm = tmp_path / "warm.jsonl"
    warm.write_text(
        json.dumps({"path": "/v1/completions", "body": {"prompt": "hello", "max_tokens": 4}, "count": 2})
        + "\n"
        + json.dumps(
            {"path": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}]}}
        )
        + "\n"
    )
    before = await _get(url + "/ready")
    report = await run_warmup(host, int(port), load_warmup(warm), timeout_s=10)
    after = await _get(url + "/ready")
    assert before == (503, {"status": "warming", "warmup_requests": 0, "warmup_required": 3})
    assert (report.sent, report.failed, report.skipped, report.errors) == (3, 0, 0, ())  # count 2 + 1
    assert report.ok
    assert report.duration_s > 0
    assert after == (200, {"status": "ready", "warmup_requests": 3, "warmup_required": 3})


async def test_warmup_array_file_with_default_path(warming_server: str) -> None:
    # The defaults (POST /) count toward the test server's warmup: it is the EAS predict shape.
    host, port = warming_server.removeprefix("http://").rsplit(":", 1)
    reqs = parse_warmup(
        '[{"count": 2}, {"method": "GET", "path": "/health"}, {"path": "/echo", "body": "x"}]'
    )
    report = await run_warmup(host, int(port), reqs, timeout_s=10)
    assert (report.sent, report.failed) == (4, 0)
    # POST / twice + POST /echo once = 3 inference requests; GET /health does not count.
    assert await _get(warming_server + "/ready") == (
        200,
        {"status": "ready", "warmup_requests": 3, "warmup_required": 3},
    )


# -- failures are counted, not raised --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "reqs", "sent", "failed", "first_error"),
    [
        pytest.param(
            Knobs(failure_rate=1.0),
            [WarmupRequest(path="/v1/completions", body=b'{"prompt": "x"}', count=3, line=1)],
            3,
            3,
            "line 1: POST /v1/completions: HTTP 500",
            id="every-answer-500",
        ),
        pytest.param(
            Knobs(),
            [
                WarmupRequest(path="/v1/completions", body=b'{"prompt": "x"}', line=1),
                WarmupRequest(path="/v1/completions", body=b"{}", line=2),
                WarmupRequest(method="GET", path="/nope", line=3),
            ],
            3,
            2,
            "line 2: POST /v1/completions: HTTP 400",
            id="4xx-count-as-failed",
        ),
        pytest.param(
            Knobs(),
            [WarmupRequest(path="/", count=2)],
            2,
            0,
            None,
            id="built-in-code-no-line",
        ),
    ],
)
async def test_non_2xx_counts_as_failed(
    knobs: Knobs, reqs: list[WarmupRequest], sent: int, failed: int, first_error: str | None
) -> None:
    async with running(knobs) as srv:
        report = await run_warmup(srv.host, srv.port, reqs, timeout_s=5)
    assert (report.sent, report.failed) == (sent, failed)
    assert report.ok is (failed == 0)
    assert (report.errors[0] if report.errors else None) == first_error


async def test_closed_port_fails_every_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    report = await run_warmup("127.0.0.1", port, [WarmupRequest(count=20)], timeout_s=2)
    assert (report.sent, report.failed) == (20, 20)
    assert len(report.errors) == 10  # only the first few are kept
    assert "ClientConnectorError" in report.errors[0]


async def test_timeout_counts_as_failed() -> None:
    async with running(Knobs(latency_ms=500)) as srv:
        report = await run_warmup(srv.host, srv.port, [WarmupRequest(path="/echo", count=1)], timeout_s=0.1)
    assert (report.sent, report.failed) == (1, 1)
    assert report.errors == ("POST /echo: timed out",)


def stepping(clock: FakeClock, step: float) -> Callable[[], float]:
    """Readings of the one fake clock, each `step` seconds after the previous one."""

    def now() -> float:
        clock.jump(step)
        return clock.now()

    return now


async def test_deadline_skips_the_rest() -> None:
    # Readings: start=1; before each send the clock is read once: 2, 3, 4 (elapsed 1, 2, 3 s).
    # With deadline 3 s the third check (elapsed 3 >= 3) stops: 2 sent, 8 skipped.
    async with running() as srv:
        report = await run_warmup(
            srv.host,
            srv.port,
            [WarmupRequest(path="/", count=10)],
            timeout_s=5,
            deadline_s=3.0,
            clock=stepping(FakeClock(0.0), 1.0),
        )
    assert (report.sent, report.failed, report.skipped) == (2, 0, 8)
    assert not report.ok


# -- hardening: what load_warmup refuses before it reads (issue 6, section 4) ---------------------


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


def _sparse(tmp_path: Path) -> str:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.truncate(MAX_WARMUP_FILE_BYTES + 1)  # no disk used
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda _p: "/dev/zero", "warm_up_data_path: /dev/zero is a device, not a regular file",
                     id="dev-zero"),
        pytest.param(_fifo, "fifo is a FIFO, not a regular file", id="fifo"),
        pytest.param(lambda p: str(p), " is a directory, not a regular file", id="directory"),
        pytest.param(_sparse, "huge.jsonl is larger than 16 MiB", id="over-16MiB"),
    ],
)  # fmt: skip
def test_load_warmup_refuses_what_is_not_a_small_regular_file(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_warmup(path)  # returns at once: nothing is read (a FIFO without writer does not block)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_warmup_file(path)


def test_load_warmup_refuses_a_line_over_1MiB(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'{"path": "/ok"}\n' + b"x" * (MAX_WARMUP_LINE_BYTES + 1) + b"\n")
    with pytest.raises(
        ValueError, match=re.escape("w.jsonl line 2 is longer than 1 MiB")
    ):
        load_warmup(path)


def test_load_warmup_refuses_a_file_that_grows_past_16MiB_while_read(tmp_path: Path) -> None:
    # /proc files report size 0 but can be long: the running total is what bounds the read.
    path = tmp_path / "w.jsonl"
    line = b'{"path": "/' + b"a" * 1000 + b'"}\n'
    path.write_bytes(line * (MAX_WARMUP_FILE_BYTES // len(line) + 1))
    with pytest.raises(ValueError, match="larger than 16 MiB"):
        load_warmup(path)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"body": ' + "[" * 100_000 + "]" * 100_000 + "}\n", id="jsonl-100k-deep"),
        pytest.param("[" + '{"body": ' + "[" * 100_000 + "]" * 100_000 + "}]", id="array-100k-deep"),
    ],
)
def test_deep_warmup_json_is_a_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match="nested too deep"):
        load_warmup(path)


def test_load_warmup_accepts_a_file_at_the_limits(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    line = '{"path": "/x", "body": "' + "a" * (MAX_WARMUP_LINE_BYTES - 40) + '"}\n'
    path.write_text(line)
    assert load_warmup(path)[0].path == "/x"
