"""The built-in test server: knobs, endpoints, streaming, warmup, metrics, failures, the CLI,
and acceptance of its bodies by the official OpenAI SDK (real servers, real HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openeas.testserver import Knobs, ServerThread, iter_sse_data, parse_args, running

# -- knobs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param([], {}, {"host": "127.0.0.1", "port": 8000, "knobs": Knobs()}, id="defaults"),
        pytest.param([], {"PORT": "9100"}, {"port": 9100}, id="port-from-env"),
        pytest.param(["--port", "9200"], {"PORT": "9100"}, {"port": 9200}, id="port-flag-wins"),
        pytest.param(
            [],
            {
                "TESTSERVER_LATENCY_MS": "12.5",
                "TESTSERVER_MODEL_NAME": "m1",
                "TESTSERVER_WARMUP_REQUIRED": "3",
            },
            {"knobs": Knobs(latency_ms=12.5, model_name="m1", warmup_required=3)},
            id="env-knobs",
        ),
        pytest.param(
            ["--latency-ms", "5", "--failure-rate", "0.25", "--seed", "7"],
            {"TESTSERVER_LATENCY_MS": "99", "TESTSERVER_TOKENS_PER_S": "40"},
            {"knobs": Knobs(latency_ms=5, failure_rate=0.25, seed=7, tokens_per_s=40)},
            id="flag-wins-env-fills-the-rest",
        ),
        pytest.param(
            [
                "--exit-after-s",
                "2",
                "--exit-code",
                "3",
                "--startup-delay-s",
                "0.5",
                "--max-tokens-default",
                "4",
            ],
            {},
            {"knobs": Knobs(exit_after_s=2, exit_code=3, startup_delay_s=0.5, max_tokens_default=4)},
            id="process-knobs",
        ),
        pytest.param(["--host", "0.0.0.0"], {}, {"host": "0.0.0.0"}, id="host"),
        pytest.param(
            [], {"TESTSERVER_MAX_CONCURRENCY": "8"}, {"knobs": Knobs(max_concurrency=8)}, id="max-concurrency"
        ),
        pytest.param([], {"TESTSERVER_VLLM_METRICS": "true"}, {"knobs": Knobs(vllm_metrics=True)}, id="vllm-metrics"),
        pytest.param(["--vllm-metrics", "0"], {"TESTSERVER_VLLM_METRICS": "1"}, {"knobs": Knobs()}, id="vllm-off"),
    ],
)
def test_parse_args(argv: list[str], env: dict[str, str], expected: dict[str, Any]) -> None:
    args = parse_args(argv, env)
    for name, value in expected.items():
        assert getattr(args, name) == value


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(
            ["--failure-rate", "1.5"], {}, "--failure-rate (TESTSERVER_FAILURE_RATE)", id="rate-above-1"
        ),
        pytest.param([], {"TESTSERVER_LATENCY_MS": "-1"}, "--latency-ms", id="negative-latency"),
        pytest.param(
            [], {"TESTSERVER_WARMUP_REQUIRED": "three"}, "TESTSERVER_WARMUP_REQUIRED", id="env-not-int"
        ),
        pytest.param(
            ["--tokens-per-s", "fast"], {}, "--tokens-per-s: cannot parse 'fast'", id="flag-not-float"
        ),
        pytest.param([], {"PORT": "http"}, "PORT", id="port-env-not-int"),
        pytest.param(["--port", "70000"], {}, "--port", id="port-out-of-range"),
        pytest.param(["--model-name", ""], {}, "--model-name", id="empty-model-name"),
        pytest.param(["--max-concurrency", "-1"], {}, "--max-concurrency", id="negative-concurrency"),
        pytest.param(["--vllm-metrics", "maybe"], {}, "--vllm-metrics: cannot parse 'maybe'", id="not-a-bool"),
    ],
)
def test_parse_args_rejects(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_args(argv, env)


# -- endpoints (in-process server, real HTTP) ----------------------------------------------------------


async def _call(
    url: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None
) -> tuple[int, Any, str]:
    """(status, parsed JSON or None, content type)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as s, s.request(method, url + path, data=data) as r:
        text = await r.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return r.status, parsed, r.content_type


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "subset"),
    [
        pytest.param("GET", "/", None, 200, {"ok": True}, id="root"),
        pytest.param("POST", "/echo", {"x": 1}, 200, {"ok": True}, id="echo"),
        pytest.param("GET", "/health", None, 200, {"status": "ok"}, id="health"),
        pytest.param("GET", "/ready", None, 200, {"status": "ready"}, id="ready-without-warmup"),
        pytest.param("GET", "/v1/models", None, 200, {"object": "list"}, id="models"),
        pytest.param("GET", "/nope", None, 404, {"error": {"type": "not_found_error"}}, id="unknown-path"),
        pytest.param(
            "POST", "/health", None, 405, {"error": {"type": "invalid_request_error"}}, id="wrong-method"
        ),
        pytest.param(
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3},
            200,
            {
                "object": "chat.completion",
                "model": "test-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok0 tok1 tok2"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            },
            id="chat",
        ),
        pytest.param(
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]},
            200,
            # No max_tokens: Knobs.max_tokens_default (16) tokens; prompt "a b" is 2 words.
            {"usage": {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18}},
            id="chat-content-parts-default-max-tokens",
        ),
        pytest.param(
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2, "max_tokens": 9},
            200,
            {"choices": [{"message": {"content": "tok0 tok1"}}]},
            id="chat-max-completion-tokens-wins",
        ),
        pytest.param(
            "POST",
            "/v1/completions",
            {"prompt": "hello world", "max_tokens": 2},
            200,
            {
                "object": "text_completion",
                "choices": [{"index": 0, "text": "tok0 tok1", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            },
            id="completion",
        ),
        pytest.param(
            "POST",
            "/v1/completions",
            {"prompt": [1, 2, 3], "max_tokens": 0},
            200,
            {"choices": [{"text": ""}], "usage": {"prompt_tokens": 3, "completion_tokens": 0}},
            id="completion-token-ids-zero-tokens",
        ),
    ],
)
async def test_endpoints(method: str, path: str, body: Any, status: int, subset: dict[str, Any]) -> None:
    async with running() as srv:
        got_status, got, ctype = await _call(srv.url, method, path, body)
    assert got_status == status
    assert ctype == "application/json"
    _assert_subset(subset, got)


def _assert_subset(expected: Any, got: Any, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {got!r}"
        for k, v in expected.items():
            assert k in got, f"{where}.{k} missing in {got!r}"
            _assert_subset(v, got[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: {got!r}"
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _assert_subset(e, g, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


@pytest.mark.parametrize(
    ("path", "raw", "param", "message"),
    [
        pytest.param("/v1/chat/completions", b"{not json", None, "not valid JSON", id="chat-invalid-json"),
        pytest.param("/v1/completions", b"", None, "not valid JSON", id="completion-empty-body"),
        pytest.param("/v1/chat/completions", b"[1]", None, "must be a JSON object", id="chat-array-body"),
        pytest.param(
            "/v1/chat/completions", b'{"model": "m"}', "messages", "'messages' is required", id="no-messages"
        ),
        pytest.param(
            "/v1/chat/completions", b'{"messages": []}', "messages", "non-empty", id="empty-messages"
        ),
        pytest.param(
            "/v1/chat/completions", b'{"messages": ["hi"]}', "messages[0]", "object", id="message-not-object"
        ),
        pytest.param("/v1/completions", b'{"model": "m"}', "prompt", "'prompt' is required", id="no-prompt"),
        pytest.param(
            "/v1/completions", b'{"prompt": {"a": 1}}', "prompt", "must be a string", id="prompt-object"
        ),
        pytest.param(
            "/v1/completions",
            b'{"prompt": "x", "max_tokens": -1}',
            "max_tokens",
            "'max_tokens'",
            id="negative-max",
        ),
        pytest.param(
            "/v1/completions", b'{"prompt": "x", "max_tokens": "5"}', "max_tokens", "integer", id="string-max"
        ),
        pytest.param(
            "/v1/completions", b'{"prompt": "x", "stream": "yes"}', "stream", "boolean", id="stream-not-bool"
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    path: str, raw: bytes, param: str | None, message: str
) -> None:
    async with running() as srv:
        status, body, _ = await _call(srv.url, "POST", path, raw=raw)
    assert status == 400
    assert body["error"]["param"] == param
    assert message in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "delta", id="chat"
        ),
        pytest.param("/v1/completions", {"prompt": "hi"}, "text", id="completion"),
    ],
)
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
async def test_streaming_chunks(path: str, body: dict[str, Any], field: str, include_usage: bool) -> None:
    body = {**body, "max_tokens": 4, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with running() as srv, aiohttp.ClientSession() as s, s.post(srv.url + path, json=body) as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"
        raw = await r.read()
    payloads = list(iter_sse_data(raw))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    # 4 tokens -> 4 content chunks, plus one usage chunk when asked for.
    assert len(chunks) == 4 + include_usage
    token_chunks = chunks[:4]
    if field == "delta":
        assert token_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"]["content"] for c in token_chunks)
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    else:
        text = "".join(c["choices"][0]["text"] for c in token_chunks)
        assert {c["object"] for c in chunks} == {"text_completion"}
    assert text == "tok0 tok1 tok2 tok3"
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None, None, None, "length"]
    assert len({c["id"] for c in chunks}) == 1
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}


# -- knob behaviour -----------------------------------------------------------------------------------


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_warmup_gates_ready_not_health_and_is_in_metrics() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with running(Knobs(warmup_required=3)) as srv:
        seen = []
        for _ in range(3):
            seen.append(
                ((await _call(srv.url, "GET", "/ready"))[0], (await _call(srv.url, "GET", "/health"))[0])
            )
            await _call(srv.url, "POST", "/v1/chat/completions", chat)
        seen.append(((await _call(srv.url, "GET", "/ready"))[0], (await _call(srv.url, "GET", "/health"))[0]))
        # GET / is a benchmark path, not inference: it does not count toward warmup.
        await _call(srv.url, "GET", "/")
        _, _, _ = await _call(srv.url, "GET", "/")
        status, text = await _text(srv.url + "/metrics")
    assert seen == [(503, 200), (503, 200), (503, 200), (200, 200)]
    assert status == 200
    m = _metrics(text)
    assert m[("testserver_warmup_requests_total", ())] == 3
    assert m[("testserver_warmup_required", ())] == 3
    assert m[("testserver_ready", ())] == 1
    assert m[("testserver_requests_total", (("code", "503"), ("endpoint", "/ready")))] == 3
    assert m[("testserver_requests_total", (("code", "200"), ("endpoint", "/v1/chat/completions")))] == 3
    assert m[("testserver_requests_total", (("code", "200"), ("endpoint", "/")))] == 2
    assert m[("testserver_requests_in_flight", ())] == 0  # the scrape itself is not a work request


async def _text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_in_flight_gauge_counts_concurrent_work_requests() -> None:
    async with running(Knobs(latency_ms=2000)) as srv:
        calls = [asyncio.create_task(_call(srv.url, "POST", "/echo", {})) for _ in range(3)]
        async with asyncio.timeout(5):  # wait until all three are inside the server (2 s each)
            while srv.state.in_flight < 3:
                await asyncio.sleep(0.01)
        _, text = await _text(srv.url + "/metrics")
        await asyncio.gather(*calls)
        _, after = await _text(srv.url + "/metrics")
    assert _metrics(text)[("testserver_requests_in_flight", ())] == 3
    assert _metrics(after)[("testserver_requests_in_flight", ())] == 0


@pytest.mark.parametrize("vllm", [True, False], ids=["vllm-metrics", "off"])
async def test_vllm_shaped_running_gauge_and_seconds_histogram(vllm: bool) -> None:
    async with running(Knobs(latency_ms=100, vllm_metrics=vllm, model_name="m")) as srv:
        await asyncio.gather(*(_call(srv.url, "POST", "/echo", {}) for _ in range(2)))
        _, text = await _text(srv.url + "/metrics")
    got = _metrics(text)
    h, m = "vllm:request_inference_time_seconds", (("model_name", "m"),)
    if not vllm:
        assert not [k for k in got if k[0].startswith("vllm:")]
        return
    assert got[("vllm:num_requests_running", m)] == 0  # both finished
    assert got[(h + "_count", m)] == 2
    assert 0.2 <= got[(h + "_sum", m)] < 2.0  # two requests of ≥ 100 ms each
    assert got[(h + "_bucket", (("le", "0.05"), *m))] == 0 and got[(h + "_bucket", (("le", "+Inf"), *m))] == 2


async def test_max_concurrency_queues_work_beyond_the_limit() -> None:
    # 2 at once, 500 ms each: 6 requests sent together finish in 3 waves, at ~0.5, 1.0, 1.5 s
    async with running(Knobs(latency_ms=500, max_concurrency=2)) as srv:
        t0 = time.monotonic()

        async def one() -> int:
            status, _, _ = await _call(srv.url, "POST", "/echo", {})
            done.append(time.monotonic() - t0)
            return status

        done: list[float] = []
        statuses = await asyncio.gather(*(one() for _ in range(6)))
    done.sort()
    assert statuses == [200] * 6  # queued, not refused
    assert done[3] >= 0.98 and done[5] >= 1.48  # never more than 2 at once
    assert done[5] < 2.9, done  # 2 at once, not 1: one at a time takes 6 x 0.5 s = 3 s


async def _codes(knobs: Knobs, n: int) -> list[int]:
    async with running(knobs) as srv:
        return [
            (await _call(srv.url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}))[0]
            for _ in range(n)
        ]


@pytest.mark.parametrize(
    ("rate", "low", "high"),
    [
        pytest.param(0.0, 0, 0, id="never"),
        pytest.param(1.0, 40, 40, id="always"),
        # 40 draws at p=0.5: 8..32 failures is far outside 5 standard deviations (sd ~3.2).
        pytest.param(0.5, 8, 32, id="half"),
    ],
)
async def test_failure_rate_is_deterministic_given_seed(rate: float, low: int, high: int) -> None:
    first = await _codes(Knobs(failure_rate=rate, seed=42), 40)
    again = await _codes(Knobs(failure_rate=rate, seed=42), 40)
    assert first == again
    assert set(first) <= {200, 500}
    assert low <= first.count(500) <= high


async def test_failure_is_openai_shaped_500() -> None:
    async with running(Knobs(failure_rate=1.0)) as srv:
        status, body, _ = await _call(srv.url, "POST", "/echo", {})
    assert status == 500
    assert body["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("knobs", "body", "min_s"),
    [
        pytest.param(Knobs(latency_ms=150), {"prompt": "x", "max_tokens": 1}, 0.15, id="latency"),
        # 6 tokens at 40 tokens/s = 0.15 s.
        pytest.param(Knobs(tokens_per_s=40), {"prompt": "x", "max_tokens": 6}, 0.15, id="pace-non-stream"),
        pytest.param(
            Knobs(tokens_per_s=40), {"prompt": "x", "max_tokens": 6, "stream": True}, 0.15, id="pace-stream"
        ),
    ],
)
async def test_latency_and_pace(knobs: Knobs, body: dict[str, Any], min_s: float) -> None:
    async with running(knobs) as srv:
        t0 = time.monotonic()
        status, _, _ = await _call(srv.url, "POST", "/v1/completions", body)
        elapsed = time.monotonic() - t0
    assert status == 200
    assert elapsed >= min_s * 0.95
    assert elapsed < min_s + 2.0  # generous: the machine is shared


async def test_streaming_pace_spreads_chunks_over_time() -> None:
    # 5 tokens at 20 tokens/s: chunk i is due at (i+1)/20 s, so first→last spans ~0.2 s.
    body = {"prompt": "x", "max_tokens": 5, "stream": True}
    arrivals = []
    async with (
        running(Knobs(tokens_per_s=20)) as srv,
        aiohttp.ClientSession() as s,
        s.post(srv.url + "/v1/completions", json=body) as r,
    ):
        async for line in r.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.15


# -- the official OpenAI SDK against a real server in a thread ------------------------------------------


@pytest.fixture(scope="module")
def sdk_server() -> Iterator[ServerThread]:
    with ServerThread(Knobs(model_name="tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(sdk_server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sdk_server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=3
    )
    assert r.choices[0].message.content == "tok0 tok1 tok2"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3 and r.usage.prompt_tokens == 2
    assert r.model == "tiny"


def test_openai_sdk_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_openai_sdk_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="a b c", max_tokens=2)
    assert r.choices[0].text == "tok0 tok1"
    assert r.usage is not None and r.usage.total_tokens == 5
    stream = client.completions.create(model="tiny", prompt="a", max_tokens=4, stream=True)
    assert "".join(c.choices[0].text for c in stream) == "tok0 tok1 tok2 tok3"


def test_openai_sdk_models_and_errors(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])


async def test_openai_async_sdk_in_the_same_loop() -> None:
    async with running() as srv:
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        r = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True
        )
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        await client.close()
    assert r.choices[0].message.content == "tok0 tok1"
    assert "".join(p or "" for p in parts) == "tok0 tok1"


# -- the process: python -m openeas.testserver ---------------------------------------------------------


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "openeas.testserver", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _listening_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on http://" in line, line + (proc.stderr.read() if proc.stderr else "")
    return line.rsplit(" ", 1)[1].strip()


def test_process_startup_delay_env_knobs_and_exit_after() -> None:
    t0 = time.monotonic()
    proc = _spawn(
        "--startup-delay-s",
        "0.5",
        "--exit-after-s",
        "1.5",
        "--exit-code",
        "3",
        env={"TESTSERVER_MODEL_NAME": "from-env"},
    )
    try:
        url = _listening_url(proc)
        bound_after = time.monotonic() - t0
        status, body, _ = asyncio.run(_call(url, "GET", "/v1/models"))
        assert status == 200 and body["data"][0]["id"] == "from-env"
        assert proc.wait(timeout=15) == 3
    finally:
        proc.kill()
        proc.wait()
    assert bound_after >= 0.5


def test_process_stops_cleanly_on_sigterm() -> None:
    proc = _spawn()
    try:
        url = _listening_url(proc)
        assert asyncio.run(_call(url, "GET", "/health"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_process_rejects_bad_knob_with_exit_2() -> None:
    proc = _spawn(env={"TESTSERVER_FAILURE_RATE": "2"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "TESTSERVER_FAILURE_RATE" in err
