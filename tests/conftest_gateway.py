"""Helpers for the gateway tests: real aiohttp upstreams and a real gateway on a background loop.

Not a conftest (pytest does not load it by name): the gateway tests import what they need, so the
rest of the suite is unaffected.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import uvloop
from aiohttp import web

from openeas.gateway import Gateway
from openeas.kernel.routing import Route, RoutingTable, Upstream

T = TypeVar("T")


class LoopThread:
    """An event loop on a thread, so tests can use blocking clients (SDKs, http.client)."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class MemorySource:
    """A routing source fed by the test; poll() hands out each new table once."""

    def __init__(self, table: RoutingTable) -> None:
        self._lock = threading.Lock()
        self._table: RoutingTable | None = table

    def set(self, table: RoutingTable) -> None:
        with self._lock:
            self._table = table

    def poll(self) -> RoutingTable | None:
        with self._lock:
            table, self._table = self._table, None
            return table


def route(service: str, ports: list[int], **kw: Any) -> Route:
    ups = tuple(Upstream(replica_id=f"{service}-{i}", host="127.0.0.1", port=p) for i, p in enumerate(ports))
    return Route(service=service, token=kw.pop("token", None), upstreams=ups, **kw)


def table(*routes: Route, version: int = 1) -> RoutingTable:
    return RoutingTable(version=version, routes={r.service: r for r in routes})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refusing_port() -> socket.socket:
    """A bound socket that does not listen: its port refuses connections for as long as the
    caller holds it, and no other program can take the port meanwhile (unlike a released one)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# Requests to an upstream's /hold?key=K wait until the test calls release(K) (or max_s passes).
_HELD: dict[str, asyncio.Event] = {}


def release(loop: asyncio.AbstractEventLoop, key: str) -> None:
    loop.call_soon_threadsafe(lambda: _HELD.setdefault(key, asyncio.Event()).set())


def upstream_app(name: str) -> web.Application:
    """A replica with endpoints for each behaviour the tests need."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.json_response(
            {
                "replica": name,
                "method": request.method,
                "path_qs": request.path_qs,
                "headers": dict(request.headers),
                "body_len": len(body),
                "body_md5": hashlib.md5(body).hexdigest(),
                "peer_port": peer[1] if peer else None,
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        gap = float(request.query.get("gap", "0.2"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(gap)
        await resp.write_eof()
        return resp

    async def openai_chat(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        words = ["Hello", " from", " OpenEAS"]
        if not req.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": req["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(words)},
                        }
                    ],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for w in words:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": req["model"],
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"replica": name})

    async def hold(request: web.Request) -> web.Response:
        event = _HELD.setdefault(request.query["key"], asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), float(request.query.get("max_s", "10")))
        except TimeoutError:
            pass
        return web.json_response({"replica": name})

    async def big(request: web.Request) -> web.Response:
        n = int(request.query.get("n", str(8 * 1024 * 1024)))
        return web.Response(body=b"x" * n, content_type="application/octet-stream")

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.05)
        return web.Response(text="unreachable")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("POST", "/v1/chat/completions", openai_chat)
    app.router.add_route("*", "/sse", sse)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/hold", hold)
    app.router.add_route("GET", "/big", big)
    app.router.add_route("*", "/drop", drop)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_upstream(name: str, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(upstream_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    return runner, int(server.sockets[0].getsockname()[1])


async def start_gateway(source: MemorySource, **kw: Any) -> Gateway:
    gw = Gateway(source, poll_interval_s=0.05, **kw)
    await gw.start("127.0.0.1", 0)
    return gw
