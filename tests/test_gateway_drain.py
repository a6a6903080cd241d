"""A replica leaving the routing table (Draining) while requests are in flight on it: they finish
on it (plain and streamed), and the gateway reports them per replica on /metrics until they have,
which is what a drain waits on before SIGTERM (openeas.controller.replica)."""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from openeas.gateway import Gateway
from openeas.kernel.routing import Route, RoutingTable, Upstream
from tests.conftest_gateway import LoopThread, MemorySource, release, start_gateway, start_upstream
from tests.harness import wait_for


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway
    source: MemorySource
    a: int
    b: int
    version: list[int] = field(default_factory=lambda: [1])

    def table(self, *ports: tuple[str, int]) -> RoutingTable:
        self.version[0] += 1
        ups = tuple(Upstream(replica_id=rid, host="127.0.0.1", port=p) for rid, p in ports)
        return RoutingTable(
            version=self.version[0], routes={"svc": Route(service="svc", token=None, upstreams=ups)}
        )

    def swap(self, *ports: tuple[str, int]) -> None:
        t = self.table(*ports)
        self.source.set(t)
        wait_for(
            lambda: self.gw.table is not None and self.gw.table.version == t.version, 5, what="table swap"
        )

    def metrics(self) -> dict[str, tuple[int, int]]:
        """replica id → (routed, in flight), from GET /metrics as a drain reads it."""
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        flight = dict(re.findall(r'openeas_gateway_replica_in_flight\{replica="([^"]+)"\} (\d+)', text))
        routed = dict(re.findall(r'openeas_gateway_replica_routed\{replica="([^"]+)"\} (\d+)', text))
        return {r: (int(routed[r]), int(n)) for r, n in flight.items()}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()
    ra, a = lt.run(start_upstream("A"))
    rb, b = lt.run(start_upstream("B"))
    source = MemorySource(RoutingTable(version=1, routes={}))
    gw = lt.run(start_gateway(source))
    e = Env(lt, gw, source, a, b)
    yield e
    lt.run(gw.stop(grace_s=1))
    lt.run(ra.cleanup())
    lt.run(rb.cleanup())
    lt.stop()


def get(env: Env, path: str, out: dict[str, Any]) -> None:
    c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=30)
    try:
        c.request("GET", f"/api/predict/svc{path}")
        r = c.getresponse()
        out["status"], out["body"] = r.status, r.read()
    except OSError as exc:
        out["error"] = exc
    finally:
        c.close()


CASES = [
    # path on the replica, how the test ends it, what the client must get in full
    pytest.param("/hold?key=drain-plain", "drain-plain", None, id="plain-request"),
    pytest.param(
        "/sse?n=12&gap=0.1", None, b"".join(f"data: {i}\n\n".encode() for i in range(12)), id="stream"
    ),
]


@pytest.mark.parametrize(("path", "key", "full"), CASES)
def test_in_flight_request_finishes_on_a_replica_that_left_the_table(
    env: Env, path: str, key: str | None, full: bytes | None
) -> None:
    env.swap(("A", env.a))
    out: dict[str, Any] = {}
    t = threading.Thread(target=get, args=(env, path, out))
    t.start()
    wait_for(lambda: env.metrics().get("A") == (1, 1), 5, what="request in flight on A")
    env.swap(("B", env.b))  # A is Draining: out of the table, its request still running
    assert env.metrics() == {"A": (0, 1), "B": (1, 0)}
    st = next(s for s in env.gw.leaving if s.upstream.replica_id == "A")
    assert st.retired and st.outstanding == 1
    if key is not None:
        release(env.lt.loop, key)
    t.join(15)
    assert out.get("status") == 200, out
    if full is not None:
        assert out["body"] == full
    # Answered: A is gone from the gateway's view (what the drain waits for), B remains.
    wait_for(lambda: env.metrics() == {"B": (1, 0)}, 5, what="A gone from /metrics")
    assert not env.gw.leaving
