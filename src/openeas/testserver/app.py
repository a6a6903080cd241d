"""The test server: a tiny, fast, deterministic OpenAI-compatible model server (aiohttp.web).

Endpoints:

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: ``max_tokens`` (default
  ``Knobs.max_tokens_default``) deterministic tokens ``tok0 tok1 …``, finish_reason ``length``;
  ``"stream": true`` gives one SSE chunk per token and ``data: [DONE]``;
  ``stream_options.include_usage`` adds the usage chunk.
- ``GET /v1/models``, ``GET /health`` (always 200 once listening), ``GET /ready`` (503 until
  ``Knobs.warmup_required`` inference requests arrived), ``GET /metrics`` (Prometheus text).
- ``/`` and ``/echo`` (any method): ``{"ok": true}``, the cheap path for gateway benchmarks.
- anything else: 404 JSON (405 JSON for a known path with the wrong method).

"Work" requests (the two inference endpoints, ``/`` and ``/echo``) get ``latency_ms``, may fail
with ``failure_rate``, wait their turn beyond ``max_concurrency`` (a known capacity of
``max_concurrency / latency`` req/s), and count in the in-flight gauge (waiting ones included);
probes and scrapes do none of that, so a scraped in-flight value is the true concurrency.
"Inference" requests, which count toward warmup, are the two ``/v1`` endpoints plus non-GET
requests to ``/`` and ``/echo`` (the EAS predict shape, and the warmup file's default ``POST /``).

Nothing is logged per request: this server is the upstream in the gateway benchmark.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from openeas.testserver.knobs import Knobs
from openeas.testserver.openai_request import (
    BadRequest,
    chat_prompt_tokens,
    completion_prompt_tokens,
    include_usage,
    max_tokens,
    parse_body,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
CLIENT_DISCONNECTED = 499  # nginx's code for "client closed the request", used in the metrics only

_OK_BODY = b'{"ok":true}'
_JSON = "application/json"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type=_JSON)


def _error(
    status: int, message: str, *, param: str | None = None, type_: str = "invalid_request_error"
) -> web.Response:
    # The OpenAI error shape: the SDK raises BadRequestError & co. with this message.
    return _json({"error": {"message": message, "type": type_, "param": param, "code": None}}, status)


# Upper bounds (seconds) of the vLLM-shaped histogram's buckets; the last one catches all.
SERVED_BUCKETS_S: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, math.inf)


@dataclass
class ServerState:
    """Counters of one server; read by ``/metrics``, ``/ready`` and by in-process tests."""

    knobs: Knobs
    in_flight: int = 0
    served_s: float = 0.0  # seconds the finished work requests were served, summed
    served_buckets: list[int] = field(default_factory=lambda: [0] * len(SERVED_BUCKETS_S))  # cumulative
    warmup_seen: int = 0
    tokens_generated: int = 0
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    next_id: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.knobs.seed)

    @property
    def ready(self) -> bool:
        return self.warmup_seen >= self.knobs.warmup_required

    def draw_failure(self) -> bool:
        """One draw per work request, in arrival order: the same seed gives the same failures."""
        rate = self.knobs.failure_rate
        return rate > 0.0 and self.rng.random() < rate

    def served(self, seconds: float) -> None:
        """A work request finished after ``seconds`` (the vLLM-shaped histogram's observation)."""
        self.served_s += seconds
        for i, le in enumerate(SERVED_BUCKETS_S):
            if seconds <= le:
                self.served_buckets[i] += 1

    @property
    def served_count(self) -> int:
        return self.served_buckets[-1]

    def new_id(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}-{self.next_id}"


# aiohttp ≥ 3.9 types application keys; 3.8 (Debian bookworm's, which the container tests' image
# runs this server on) takes a plain string.
STATE_KEY: Any = web.AppKey("testserver_state", ServerState) if hasattr(web, "AppKey") else "testserver_state"


def _tokens(n: int) -> list[str]:
    """The i-th streamed piece; joined they give ``"tok0 tok1 … tok{n-1}"``."""
    return [f"tok{i}" if i == 0 else f" tok{i}" for i in range(n)]


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.knobs = state.knobs
        self.latency_s = state.knobs.latency_ms / 1000.0
        # One limit shared by every work endpoint: the server's capacity, whatever the path.
        n = state.knobs.max_concurrency
        self.limit: asyncio.Semaphore | None = asyncio.Semaphore(n) if n else None

    # -- wrappers -------------------------------------------------------------------------------

    def instrument(self, endpoint: str, handler: Handler, *, work: bool) -> Handler:
        state = self.state
        requests = state.requests

        limit = self.limit if work else None

        async def wrapped(request: web.Request) -> web.StreamResponse:
            code = 500
            started = time.monotonic()
            if work:
                state.in_flight += 1
            try:
                if limit is not None:
                    async with limit:  # FIFO: requests past the limit wait in arrival order
                        resp = await handler(request)
                else:
                    resp = await handler(request)
                code = resp.status
                return resp
            except (ConnectionResetError, asyncio.CancelledError):
                code = CLIENT_DISCONNECTED
                raise
            finally:
                if work:
                    state.in_flight -= 1
                    state.served(time.monotonic() - started)
                key = (endpoint, code)
                requests[key] = requests.get(key, 0) + 1

        return wrapped

    async def _work_preamble(self, inference: bool) -> web.Response | None:
        """Warmup count, latency and the failure draw shared by every work request."""
        if inference:
            self.state.warmup_seen += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.state.draw_failure():
            return _error(500, "injected failure (--failure-rate)", type_="server_error")
        return None

    # -- cheap paths ----------------------------------------------------------------------------

    async def ok(self, request: web.Request) -> web.StreamResponse:
        inference = request.method not in ("GET", "HEAD")
        if inference or self.latency_s > 0 or self.knobs.failure_rate > 0:
            failed = await self._work_preamble(inference)
            if failed is not None:
                return failed
        return web.Response(body=_OK_BODY, content_type=_JSON)

    async def health(self, request: web.Request) -> web.StreamResponse:
        if self.knobs.unhealthy_file and os.path.exists(self.knobs.unhealthy_file):
            return _json({"status": "unhealthy"}, status=500)
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.StreamResponse:
        s = self.state
        body = {"warmup_requests": s.warmup_seen, "warmup_required": self.knobs.warmup_required}
        if self.knobs.unready_file and os.path.exists(self.knobs.unready_file):
            return _json({"status": "not ready", **body}, status=503)
        if s.ready:
            return _json({"status": "ready", **body})
        return _json({"status": "warming", **body}, status=503)

    async def models(self, request: web.Request) -> web.StreamResponse:
        model = {"id": self.knobs.model_name, "object": "model", "created": 0, "owned_by": "openeas"}
        return _json({"object": "list", "data": [model]})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        text = render_metrics(self.state) + _engine_metrics(self.state.knobs, request)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        allowed = _KNOWN_METHODS.get(request.path)
        if allowed is not None:
            return web.Response(
                body=_dumps(
                    {
                        "error": {
                            "message": f"method {request.method} not allowed on {request.path}",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
                status=405,
                content_type=_JSON,
                headers={"Allow": ", ".join(allowed)},
            )
        return _error(404, f"no such path: {request.path}", type_="not_found_error")

    # -- inference ------------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        failed = await self._work_preamble(True)
        if failed is not None:
            return failed
        raw = await request.read()
        try:
            req = parse_body(raw)
            prompt_tokens = chat_prompt_tokens(req) if chat else completion_prompt_tokens(req)
            n = max_tokens(req, self.knobs.max_tokens_default, chat=chat)
            stream = req.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("'stream' must be a boolean", "stream")
            with_usage = include_usage(req) if stream else False
        except BadRequest as e:
            return _error(400, e.message, param=e.param)

        s = self.state
        s.tokens_generated += n
        rid = s.new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        tps = self.knobs.tokens_per_s
        if stream:
            return await self._stream(request, rid, created, n, usage if with_usage else None, chat=chat)
        if tps > 0 and n > 0:
            await asyncio.sleep(n / tps)
        text = "".join(_tokens(n))
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        return _json(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.knobs.model_name,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        created: int,
        n: int,
        usage: dict[str, int] | None,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        model = self.knobs.model_name
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": created, "model": model}
        tps = self.knobs.tokens_per_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        pieces = _tokens(n) or [""]  # max_tokens=0 still sends one (empty) chunk with finish_reason
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if tps > 0 and n > 0:
                # Pace against the start time, not per sleep, so the rate does not drift.
                delay = start + (i + 1) / tps - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            finish = "length" if i == last else None
            choice: dict[str, Any]
            if chat:
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
            await resp.write(b"data: " + _dumps({**head, "choices": [choice]}) + b"\n\n")
        if usage is not None:
            await resp.write(b"data: " + _dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


# -- metrics --------------------------------------------------------------------------------------


def render_metrics(state: ServerState) -> str:
    """Prometheus text exposition (format 0.0.4) of the server's counters."""
    k = state.knobs
    lines = [
        "# HELP testserver_requests_in_flight Work requests being served now (probes and scrapes excluded).",
        "# TYPE testserver_requests_in_flight gauge",
        f"testserver_requests_in_flight {state.in_flight}",
        "# HELP testserver_requests_total Requests answered, by endpoint and status code.",
        "# TYPE testserver_requests_total counter",
    ]
    for (endpoint, code), count in sorted(state.requests.items()):
        lines.append(f'testserver_requests_total{{endpoint="{endpoint}",code="{code}"}} {count}')
    lines += [
        "# HELP testserver_warmup_requests_total Inference requests seen (they count toward warmup).",
        "# TYPE testserver_warmup_requests_total counter",
        f"testserver_warmup_requests_total {state.warmup_seen}",
        "# HELP testserver_warmup_required Inference requests needed before /ready answers 200.",
        "# TYPE testserver_warmup_required gauge",
        f"testserver_warmup_required {k.warmup_required}",
        "# HELP testserver_ready 1 when /ready answers 200.",
        "# TYPE testserver_ready gauge",
        f"testserver_ready {int(state.ready)}",
        "# HELP testserver_tokens_generated_total Completion tokens generated.",
        "# TYPE testserver_tokens_generated_total counter",
        f"testserver_tokens_generated_total {state.tokens_generated}",
    ]
    if k.vllm_metrics:
        lines += _vllm_lines(state)
    return "\n".join(lines) + "\n"


def _vllm_lines(state: ServerState) -> list[str]:
    """vLLM's running gauge and its histogram of seconds in RUNNING, as vLLM names them."""
    name, model = "vllm:request_inference_time_seconds", f'model_name="{state.knobs.model_name}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{model}}} {state.in_flight}",
        f"# HELP {name} Histogram of time spent in RUNNING phase for request.",
        f"# TYPE {name} histogram",
    ]
    for le, n in zip(SERVED_BUCKETS_S, state.served_buckets, strict=True):
        bound = "+Inf" if math.isinf(le) else f"{le:g}"
        lines.append(f'{name}_bucket{{le="{bound}",{model}}} {n}')
    lines += [f"{name}_sum{{{model}}} {state.served_s!r}", f"{name}_count{{{model}}} {state.served_count}"]
    return lines


def _engine_metrics(knobs: Knobs, request: web.Request) -> str:
    """The ``engine_metrics_file`` knob's lines, "" without one."""
    if not knobs.engine_metrics_file:
        return ""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    port = sockname[1] if isinstance(sockname, tuple) else 0
    try:
        text = Path(knobs.engine_metrics_file.replace("{port}", str(port))).read_text()
    except OSError:
        return ""
    return text if text.endswith("\n") or not text else text + "\n"


# -- application and runners ----------------------------------------------------------------------

# path -> methods; also what the catch-all answers 405 with.
_KNOWN_METHODS: dict[str, tuple[str, ...]] = {
    CHAT_PATH: ("POST",),
    COMPLETIONS_PATH: ("POST",),
    "/v1/models": ("GET",),
    "/health": ("GET",),
    "/ready": ("GET",),
    "/metrics": ("GET",),
}


def make_app(knobs: Knobs | None = None) -> web.Application:
    """The aiohttp application; its ``ServerState`` is ``app[STATE_KEY]``."""
    state = ServerState(knobs or Knobs())
    h = _Handlers(state)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    r = app.router
    r.add_post(CHAT_PATH, h.instrument(CHAT_PATH, h.chat, work=True))
    r.add_post(COMPLETIONS_PATH, h.instrument(COMPLETIONS_PATH, h.completions, work=True))
    r.add_get("/v1/models", h.instrument("/v1/models", h.models, work=False), allow_head=False)
    r.add_get("/health", h.instrument("/health", h.health, work=False), allow_head=False)
    r.add_get("/ready", h.instrument("/ready", h.ready, work=False), allow_head=False)
    r.add_get("/metrics", h.instrument("/metrics", h.metrics, work=False), allow_head=False)
    r.add_route("*", "/", h.instrument("/", h.ok, work=True))
    r.add_route("*", "/echo", h.instrument("/echo", h.ok, work=True))
    # Last: everything unmatched (including a known path with the wrong method) gets JSON.
    r.add_route("*", "/{tail:.*}", h.instrument("other", h.not_found, work=False))
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free port (read it with ``getsockname``)."""
    family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    state: ServerState

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@asynccontextmanager
async def running(
    knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Serve in the current event loop until the block exits (in-process tests).

    ``startup_delay_s`` and ``exit_after_s`` are process-level knobs: only ``serve`` applies them.
    """
    app = make_app(knobs)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = bind_socket(host, port)
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        yield RunningServer(host=host, port=sock.getsockname()[1], state=app[STATE_KEY])
    finally:
        await runner.cleanup()
        sock.close()


class ServerThread:
    """The test server on its own event loop in a daemon thread, for synchronous tests.

    >>> with ServerThread(Knobs(latency_ms=5)) as srv:
    ...     requests.get(srv.url + "/health")
    """

    def __init__(self, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._args = (knobs, host, port)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="openeas-testserver", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: RunningServer | None = None
        self._error: BaseException | None = None

    @property
    def server(self) -> RunningServer:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def state(self) -> ServerState:
        return self.server.state

    def start(self, timeout_s: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"test server did not start within {timeout_s}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # surfaced to start() in the caller's thread
            self._error = e
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running(*self._args) as srv:
            self._server = srv
            self._started.set()
            await self._stop.wait()


async def serve(
    knobs: Knobs,
    host: str,
    port: int,
    *,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = print,
) -> int:
    """The process main: sleep ``startup_delay_s``, serve until ``stop`` is set or
    ``exit_after_s`` passes, and return the exit status (``exit_code`` after ``exit_after_s``)."""
    stop = stop or asyncio.Event()
    if knobs.startup_delay_s > 0:
        await asyncio.sleep(knobs.startup_delay_s)
    async with running(knobs, host, port) as srv:
        if announce is not None:
            announce(f"openeas testserver listening on {srv.url}")
        if knobs.exit_after_s is None:
            await stop.wait()
            return 0
        try:
            await asyncio.wait_for(stop.wait(), knobs.exit_after_s)
        except TimeoutError:
            return knobs.exit_code
        return 0


def iter_sse_data(body: bytes) -> Iterator[str]:
    """The ``data:`` payloads of an SSE body, in order (a helper for tests)."""
    for event in body.decode().split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data:"):
                yield line[5:].strip()
