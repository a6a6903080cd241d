"""The ``X-OpenEAS-Member`` header over real sockets: a real gateway, a raw replica that writes
its answer in pieces (the status line split across reads, at its CR LF, after it), a group and
its member endpoint. The header names the member on every answer a member's replica gave, on
every answer of a keep-alive connection; a service's own endpoint and the gateway's own answers
carry none."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from openeas.gateway import Gateway
from openeas.gateway.groups.split import MEMBER_HEADER
from openeas.kernel.groups import GroupDef, GroupMember
from openeas.kernel.routing import RoutingTable
from tests.conftest_gateway import LoopThread, MemorySource, route, start_gateway

TOKEN = "group-token-456"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers ``GET /cut/N`` with ANSWER written as two pieces, cut N bytes in (0: one piece)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            cut = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
            if cut:
                writer.write(ANSWER[:cut])
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(ANSWER[cut:])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(_serve, "127.0.0.1", 0)

    server = lt.run(start())
    port = server.sockets[0].getsockname()[1]
    groups = {
        "g": GroupDef("g", TOKEN, (GroupMember("a", 1000),)),
        "idle": GroupDef("idle", TOKEN, (GroupMember("a", 0),)),
    }
    tbl = RoutingTable(version=1, routes={"a": route("a", [port])}, groups=groups)
    gw = lt.run(start_gateway(MemorySource(tbl)))
    gw.apply(tbl)
    yield Env(lt, gw)
    lt.run(gw.stop(grace_s=1))
    server.close()
    lt.stop()


@pytest.mark.parametrize(
    ("path", "member"),
    [
        pytest.param("/api/predict/g/cut/0", "a", id="group-one-piece"),
        pytest.param("/api/predict/g/cut/5", "a", id="group-status-line-split"),
        pytest.param("/api/predict/g/cut/16", "a", id="group-split-between-cr-and-lf"),
        pytest.param("/api/predict/g/cut/17", "a", id="group-split-after-status-line"),
        pytest.param("/api/predict/g.a/cut/5", "a", id="member-endpoint"),
        pytest.param("/api/predict/a/cut/5", None, id="service-endpoint-none"),
    ],
)
def test_the_member_header_names_who_answered(env: Env, path: str, member: str | None) -> None:
    c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=10)
    try:
        for _ in range(2):  # the second answer on the same keep-alive connection too
            c.request("GET", path, headers={"Authorization": TOKEN})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"ok")
            assert r.getheader(MEMBER_HEADER) == member
            assert r.getheader("Content-Type") == "text/plain"  # the replica's headers are intact
    finally:
        c.close()


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        pytest.param("/api/predict/g/cut/0", "wrong", 401, id="wrong-token"),
        pytest.param("/api/predict/idle/cut/0", TOKEN, 503, id="no-weighted-member"),
        pytest.param("/api/predict/g.nope/cut/0", TOKEN, 404, id="unknown-member"),
    ],
)
def test_the_gateways_own_answers_name_no_member(env: Env, path: str, token: str, status: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=10)
    try:
        c.request("GET", path, headers={"Authorization": token})
        r = c.getresponse()
        r.read()
        assert r.status == status
        assert r.getheader(MEMBER_HEADER) is None
    finally:
        c.close()
