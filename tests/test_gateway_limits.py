"""The gateway's limits and deadlines over real sockets: an in-process gateway (short deadlines,
small limits), an aiohttp replica, raw socket clients that send what no well-behaved client does."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from openeas.gateway import Gateway
from openeas.gateway.context import ProxyContext
from tests.conftest_gateway import LoopThread, MemorySource, route, start_upstream, table
from tests.harness import wait_for

LIMITS = {
    "max_url_bytes": 8 * 1024,
    "max_header_bytes": 32 * 1024,
    "max_headers": 100,
    "head_timeout_s": 0.4,
    "keepalive_timeout_s": 0.6,
    "body_timeout_s": 0.5,
    "max_connections": 20,
}


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway

    def sock(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


async def start_websocket_replica() -> tuple[web.AppRunner, int]:
    """A replica whose /ws echoes WebSocket text messages, upper-cased."""

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data.upper())
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None and site._server.sockets
    return runner, int(site._server.sockets[0].getsockname()[1])


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()
    runner, port = lt.run(start_upstream("a"))
    ws_runner, ws_port = lt.run(start_websocket_replica())
    routes = table(route("echo", [port]), route("ws", [ws_port], timeout_s=0.5))
    gw = Gateway(MemorySource(routes), poll_interval_s=0.05)
    gw.ctx = ProxyContext(gw.metrics, **LIMITS)  # type: ignore[arg-type]  # short deadlines for tests
    lt.run(gw.start("127.0.0.1", 0))
    yield Env(lt, gw)
    lt.run(gw.stop(grace_s=1))
    lt.run(runner.cleanup())
    lt.run(ws_runner.cleanup())
    lt.stop()


def read_all(s: socket.socket) -> bytes:
    """Everything until the gateway closes the connection."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def send_quietly(s: socket.socket, data: bytes) -> None:
    """Send what the gateway may refuse (and close on) before it has read all of it."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(b"GET /api/predict/echo/" + b"u" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="1MB-url"),
        pytest.param(b"GET /api/predict/echo HTTP/1.1\r\nX-Big: " + b"v" * (1 << 20) + b"\r\n\r\n", 431, id="1MB-header"),
        pytest.param(b"GET /api/predict/echo HTTP/1.1\r\n" + b"X-N: 1\r\n" * 100_000 + b"\r\n", 431, id="100k-headers"),
    ],
)
def test_oversized_head_is_refused(env: Env, head: bytes, status: int) -> None:
    with env.sock() as s:
        send_quietly(s, head)
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and answer.count(b"HTTP/1.1") == 1
    assert all(len(url) <= 512 for url in env.gw.ctx.targets)


@pytest.mark.parametrize(
    ("steps", "kind", "answer"),
    [
        pytest.param([], "head", b"HTTP/1.1 408 ", id="silent-connection"),
        pytest.param([b"G", b"E", b"T", b" ", b"/"], "head", b"HTTP/1.1 408 ", id="trickled-head"),
        pytest.param([b"GET /api/predict/echo HTTP/1.1\r\nHost: x\r\n\r\n"], "keepalive", b"HTTP/1.1 200 ", id="idle-keep-alive"),
        pytest.param([b"POST /api/predict/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234"], "body", b"HTTP/1.1 408 ", id="stalled-body"),
    ],
)
def test_slow_connection_is_closed_by_its_deadline(env: Env, steps: list[bytes], kind: str, answer: bytes) -> None:
    before = env.gw.metrics.timeouts.get(kind, 0)
    with env.sock() as s:
        started = time.monotonic()
        for data in steps:
            send_quietly(s, data)
            time.sleep(0.15)  # trickled: each byte well within any one deadline, the head not
        got = read_all(s)
        took = time.monotonic() - started
    assert got.startswith(answer)
    assert took < 10.0  # the deadline (0.4-0.6 s) plus the sweep's step, not the 30 s socket timeout
    assert env.gw.metrics.timeouts.get(kind, 0) == before + 1


def test_connection_cap_answers_503(env: Env) -> None:
    wait_for(lambda: env.gw.metrics.connections == 0, 5, what="earlier connections closed")
    held = [env.sock() for _ in range(LIMITS["max_connections"])]  # type: ignore[call-overload]
    try:
        wait_for(lambda: env.gw.metrics.connections == len(held), 5, what="all connections accepted")
        with env.sock() as s:
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in answer
    finally:
        for s in held:
            s.close()
    wait_for(lambda: env.gw.metrics.connections == 0, 5, what="the held connections closed")
    with env.sock() as s:  # room again
        s.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 200 ")


def test_upgrades_are_refused_and_hold_nothing(env: Env) -> None:
    post = b"POST /api/predict/echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello"
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    for data in [post] * 30 + [connect] * 5:
        with env.sock() as s:
            s.sendall(data)
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 501 ") and answer.count(b"HTTP/1.1") == 1
    assert env.gw.metrics.services["echo"].in_flight == 0
    assert all(st.outstanding == 0 and not st.idle for st in env.gw.upstreams.values())


def test_metrics_show_the_limits(env: Env) -> None:
    with env.sock() as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        text = read_all(s).decode()
    for name, value in LIMITS.items():
        assert f'openeas_gateway_limit{{name="{name}"}} {value:g}' in text
    assert "openeas_gateway_connections " in text


def test_pipelined_requests_in_one_write_are_all_answered(env: Env) -> None:
    get = b"GET /api/predict/echo/n%d HTTP/1.1\r\nHost: x\r\n\r\n"
    with env.sock() as s:
        s.sendall(b"".join(get % i for i in range(5)) + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = read_all(s)
    assert answers.count(b"HTTP/1.1 200 ") == 6
    assert [answers.find(b"/n%d" % i) for i in range(5)] == sorted(answers.find(b"/n%d" % i) for i in range(5))


def test_websocket_through_the_gateway(env: Env) -> None:
    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{env.gw.port}/api/predict/ws/ws"
            async with session.ws_connect(url) as sock:
                got = []
                for word in ("hello", "world"):
                    await sock.send_str(word)
                    got.append((await sock.receive()).data)
                    await asyncio.sleep(0.4)  # past the route's timeout (0.5 s) and the head deadline
                return got

    assert asyncio.run(talk()) == ["HELLO", "WORLD"]
    assert env.gw.metrics.services["ws"].by_code == {101: 1}
    wait_for(lambda: env.gw.metrics.services["ws"].in_flight == 0, 5, what="the tunnel counted once")
