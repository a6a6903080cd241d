"""The gateway over real sockets: aiohttp replicas, a real gateway, blocking HTTP clients and SDKs."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from openeas.gateway import Gateway
from tests.conftest_gateway import (
    LoopThread,
    MemorySource,
    refusing_port,
    release,
    route,
    start_gateway,
    start_upstream,
    table,
)
from tests.harness import wait_for

TOKEN = "tok-123"
# How long this module's routes hold a request that finds no reachable replica (hold_timeout_s,
# 120 s by default): the 503 cases below check that they were held that long, without waiting out
# the default.
HOLD_S = 0.3


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway
    source: MemorySource
    a: int  # replica ports
    b: int
    dead: int

    @property
    def port(self) -> int:
        return self.gw.port

    def conn(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def standard_table(self, version: int = 1) -> Any:
        a, b, dead = self.a, self.b, self.dead
        return table(
            route("echo", [a, b]),
            route("auth", [a], token=TOKEN),
            route("empty", [], hold_timeout_s=HOLD_S),
            route("limited", [a], max_body_bytes=1000),
            route("slow", [a], timeout_s=0.3),
            route("badlb", [a], balancer="fastest"),
            route("dead", [dead], hold_timeout_s=HOLD_S),
            route("halfdead", [dead, a], hold_timeout_s=HOLD_S),
            route("rr", [a, b], balancer="round-robin"),
            route("onlya", [a]),
            version=version,
        )


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()
    ra, a = lt.run(start_upstream("A"))
    rb, b = lt.run(start_upstream("B"))
    source = MemorySource(table())
    gw = lt.run(start_gateway(source))
    dead = refusing_port()  # held for the module: the "dead" replica's port refuses connections
    e = Env(lt, gw, source, a, b, dead.getsockname()[1])
    source.set(e.standard_table())
    e.gw.apply(e.standard_table())
    yield e
    lt.run(gw.stop(grace_s=1))
    lt.run(ra.cleanup())
    lt.run(rb.cleanup())
    lt.stop()
    dead.close()


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        pytest.param("/api/predict/echo", "/", id="root"),
        pytest.param("/api/predict/echo/v1/models", "/v1/models", id="sub-path"),
        pytest.param("/api/predict/echo?x=1&y=%20", "/?x=1&y=%20", id="query"),
        pytest.param("/api/predict/echo/a/b?c=d", "/a/b?c=d", id="sub-path-query"),
    ],
)
def test_path_rewrite(env: Env, path: str, upstream_path: str) -> None:
    status, _, body = env.request("GET", path)
    assert status == 200
    assert json.loads(body)["path_qs"] == upstream_path


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
def test_any_method(env: Env, method: str) -> None:
    status, _, body = env.request(method, "/api/predict/echo/m", body=b"abc" if method != "GET" else None)
    assert status == 200
    assert json.loads(body)["method"] == method


def test_head(env: Env) -> None:
    c = env.conn()
    for _ in range(3):  # the connection stays usable after a body-less HEAD response
        c.request("HEAD", "/api/predict/onlya/h")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b""
        c.request("GET", "/api/predict/onlya/h")
        r = c.getresponse()
        assert json.loads(r.read())["method"] == "GET"
    c.close()


def _err(body: bytes) -> tuple[str, str]:
    e = json.loads(body)["error"]
    return e["code"], e["message"]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "message"),
    [
        pytest.param(
            "GET",
            "/api/predict/nope",
            {},
            None,
            404,
            "service_not_found",
            "service 'nope' not found",
            id="unknown-service",
        ),
        pytest.param(
            "GET",
            "/v1/models",
            {},
            None,
            404,
            "not_found",
            "no route for '/v1/models': use /api/predict/<service>[/path]",
            id="outside-predict",
        ),
        pytest.param(
            "POST", "/metrics", {}, b"", 404, "not_found", "no route for '/metrics'", id="post-metrics"
        ),
        pytest.param(
            "GET",
            "/api/predict/auth",
            {},
            None,
            401,
            "missing_token",
            "service 'auth' requires a token",
            id="missing-token",
        ),
        pytest.param(
            "GET",
            "/api/predict/auth",
            {"Authorization": "nope"},
            None,
            401,
            "invalid_token",
            "wrong token for service 'auth'",
            id="wrong-token",
        ),
        pytest.param(
            "GET",
            "/api/predict/auth",
            {"Authorization": "Bearer nope"},
            None,
            401,
            "invalid_token",
            "wrong token for service 'auth'",
            id="wrong-bearer",
        ),
        pytest.param(
            "POST",
            "/api/predict/auth",
            {"Authorization": "EAS AAAAAAAAAAAAAAAAAAAAAAAAAAA=", "Date": "Mon, 01 Jan 2024 00:00:00 GMT"},
            b"x",
            401,
            "invalid_signature",
            "wrong EAS signature for service 'auth'",
            id="bad-signature",
        ),
        pytest.param(
            "GET",
            "/api/predict/empty",
            {},
            None,
            503,
            "no_ready_replica",
            "service 'empty' has no ready replica",
            id="no-replica",
        ),
        pytest.param(
            "POST",
            "/api/predict/limited",
            {},
            b"x" * 1001,
            413,
            "body_too_large",
            "request body exceeds 1000 bytes, the limit of service 'limited'",
            id="too-large-length",
        ),
        pytest.param(
            "POST",
            "/api/predict/limited",
            {},
            iter([b"x" * 600, b"y" * 600]),
            413,
            "body_too_large",
            "request body exceeds 1000 bytes",
            id="too-large-chunked",
        ),
        pytest.param(
            "GET",
            "/api/predict/slow/slow?s=2",
            {},
            None,
            408,
            "timeout",
            "service 'slow' did not answer within 0.3 s",
            id="timeout",
        ),
        pytest.param(
            "GET",
            "/api/predict/badlb",
            {},
            None,
            500,
            "invalid_balancer",
            "unknown balancer 'fastest'; known: least-kv, least-request, least-waiting, power-of-two, prefix-affinity, round-robin, session-affinity",
            id="unknown-balancer",
        ),
        pytest.param(
            "GET",
            "/api/predict/dead",
            {},
            None,
            503,
            "no_ready_replica",
            "service 'dead' has no reachable replica: connect to replica dead-0",
            id="replica-down",
        ),
        pytest.param(
            "GET",
            "/api/predict/onlya/drop",
            {},
            None,
            502,
            "upstream_failed",
            "closed the connection before answering",
            id="replica-drops-connection",
        ),
    ],
)
def test_errors(
    env: Env, method: str, path: str, headers: dict[str, str], body: Any, status: int, code: str, message: str
) -> None:
    t0 = time.monotonic()
    got_status, got_headers, got_body = env.request(method, path, body=body, headers=headers)
    took = time.monotonic() - t0
    assert got_status == status, got_body
    if code == "no_ready_replica":  # held for a replica to appear (hold_timeout_s), then the 503
        assert HOLD_S <= took < HOLD_S + 1.5, took
    assert got_headers["Content-Type"] == "application/json"
    got_code, got_message = _err(got_body)
    assert got_code == code
    assert message in got_message
    assert TOKEN not in got_message


def test_timeout_leaves_client_connection_usable(env: Env) -> None:
    c = env.conn()
    c.request("GET", "/api/predict/slow/slow?s=1")
    r = c.getresponse()
    assert r.status == 408
    r.read()
    c.request("GET", "/api/predict/slow/slow?s=0")
    assert c.getresponse().status == 200
    c.close()


@pytest.mark.parametrize(
    "auth",
    [pytest.param(TOKEN, id="plain"), pytest.param(f"Bearer {TOKEN}", id="bearer")],
)
def test_token_accepted_and_not_forwarded(env: Env, auth: str) -> None:
    status, _, body = env.request("POST", "/api/predict/auth/x", body=b"hi", headers={"Authorization": auth})
    assert status == 200
    headers = {k.lower() for k in json.loads(body)["headers"]}
    assert "authorization" not in headers


def test_eas_sdk_signed_request(env: Env) -> None:
    from eas_prediction import PredictClient, StringRequest

    client = PredictClient(f"127.0.0.1:{env.port}", "auth")
    client.set_token(TOKEN)
    client.init()
    resp = client.predict(StringRequest('{"hello": "world"}'))
    echoed = json.loads(resp.response_data)
    assert echoed["path_qs"] == "/"
    assert echoed["body_md5"] == hashlib.md5(b'{"hello": "world"}').hexdigest()
    assert "Authorization" not in echoed["headers"]
    client.destroy()


def test_eas_signed_body_tampered(env: Env) -> None:
    from eas_prediction import PredictClient

    client = PredictClient(f"127.0.0.1:{env.port}", "auth")
    client.set_token(TOKEN)
    headers = client.generate_singaure(bytearray(b"original"))
    headers["Content-Length"] = "8"
    status, _, body = env.request("POST", "/api/predict/auth", body=b"tampered", headers=headers)
    assert status == 401
    assert _err(body) == ("content_md5_mismatch", "Content-MD5 header does not match the request body")


def test_openai_sdk_streams_through(env: Env) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{env.port}/api/predict/auth/v1", api_key=TOKEN)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hello", " from", " OpenEAS"]
    full = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert full.choices[0].message.content == "Hello from OpenEAS"


def test_sse_chunks_arrive_as_sent(env: Env) -> None:
    # 5 events, 0.2 s apart: streamed means event i arrives ~0.2*i s after the first, not all at the end.
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(b"GET /api/predict/echo/sse?n=5&gap=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        arrivals: list[float] = []
        buf = b""
        t0 = time.monotonic()
        while b"0\r\n\r\n" not in buf:
            data = s.recv(65536)
            assert data
            buf += data
            while len(arrivals) < 5 and f"data: {len(arrivals)}".encode() in buf:
                arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 5
    assert arrivals[4] - arrivals[0] >= 0.6  # 4 gaps of 0.2 s: the first event did not wait for the rest


def test_chunked_upload(env: Env) -> None:
    parts = [bytes([i]) * (10_000 + i) for i in range(50)]
    status, _, body = env.request("POST", "/api/predict/echo/up", body=iter(parts))
    echoed = json.loads(body)
    assert status == 200
    assert echoed["body_len"] == sum(map(len, parts))
    assert echoed["body_md5"] == hashlib.md5(b"".join(parts)).hexdigest()
    assert echoed["headers"]["Transfer-Encoding"] == "chunked"


def test_large_bodies_both_ways(env: Env) -> None:
    payload = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
    status, _, body = env.request("POST", "/api/predict/echo/up", body=payload)
    assert status == 200
    assert json.loads(body)["body_md5"] == hashlib.md5(payload).hexdigest()
    status, _, body = env.request("GET", "/api/predict/echo/big?n=50000000")
    assert status == 200 and len(body) == 50_000_000


def test_keep_alive_reuses_one_upstream_connection(env: Env) -> None:
    c = env.conn()
    peers = set()
    for _ in range(20):
        c.request("GET", "/api/predict/onlya/k")
        peers.add(json.loads(c.getresponse().read())["peer_port"])
    c.close()
    assert len(peers) == 1  # sequential requests: one pooled upstream connection serves them all


def test_retry_skips_dead_replica(env: Env) -> None:
    replicas = []
    for _ in range(30):
        status, _, body = env.request("GET", "/api/predict/halfdead/r")
        assert status == 200
        replicas.append(json.loads(body)["replica"])
    assert set(replicas) == {"A"}


def test_least_request_spreads_and_round_robin_alternates(env: Env) -> None:
    seen = [json.loads(env.request("GET", "/api/predict/echo/x")[2])["replica"] for _ in range(40)]
    assert set(seen) == {"A", "B"}  # random tie-break between idle replicas; P(miss) = 2^-39
    rr = [json.loads(env.request("GET", "/api/predict/rr/x")[2])["replica"] for _ in range(6)]
    assert rr in (["A", "B"] * 3, ["B", "A"] * 3)


@pytest.mark.parametrize(
    ("route", "busy_gets"),
    [
        # One request holds a replica busy; 8 more are sent one after another meanwhile.
        # least-request: outstanding 1/0 each time, so all 8 go to the idle replica (random or
        # round-robin would send about half to the busy one: P(random passes) = 2^-8).
        pytest.param("echo", 0, id="least-request-avoids-the-busy-replica"),
        # round-robin ignores load: it alternates, 4 of the 8 to the busy one.
        pytest.param("rr", 4, id="round-robin-alternates-regardless"),
    ],
)
def test_balancer_and_a_busy_replica(env: Env, route: str, busy_gets: int) -> None:
    key = f"busy-{route}"
    held: list[str] = []
    t = threading.Thread(
        target=lambda: held.append(json.loads(env.request("GET", f"/api/predict/{route}/hold?key={key}")[2])["replica"])
    )
    t.start()
    try:
        wait_for(lambda: env.gw.metrics.snapshot()[route].in_flight == 1, 10, what="the held request in flight")
        others = [json.loads(env.request("GET", f"/api/predict/{route}/x")[2])["replica"] for _ in range(8)]
        assert env.gw.metrics.snapshot()[route].in_flight == 1  # still held throughout
    finally:
        release(env.lt.loop, key)
        t.join(10)
    (busy,) = held
    assert others.count(busy) == busy_gets, (busy, others)


def test_metrics_endpoint_and_snapshot(env: Env) -> None:
    before = env.gw.metrics.snapshot().get("onlya")
    n0 = before.requests_total if before else 0
    for _ in range(3):
        env.request("GET", "/api/predict/onlya/m")
    snap = env.gw.metrics.snapshot()["onlya"]
    assert snap.requests_total == n0 + 3 and snap.in_flight == 0
    status, headers, body = env.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert f'openeas_gateway_requests_total{{service="onlya",code="200"}} {snap.by_code[200]}' in text
    assert 'openeas_gateway_request_duration_seconds_count{service="onlya"}' in text
    assert env.request("GET", "/healthz")[0] == 200


def test_table_swap_retires_replica(env: Env) -> None:
    env.request("GET", "/api/predict/onlya/warm")
    old = next(st for st in env.gw.upstreams.values() if st.port == env.a)
    assert old.idle
    # "onlya" moves to B and A leaves the table everywhere: A's idle connections get closed.
    t = env.standard_table(version=2)
    routes = {name: r for name, r in t.routes.items() if all(u.port != env.a for u in r.upstreams)}
    routes["onlya"] = route("onlya", [env.b])
    env.source.set(type(t)(version=2, routes=routes))
    wait_for(lambda: env.gw.table is not None and env.gw.table.version == 2, 5, what="table version 2")
    assert old.retired and not old.idle
    assert json.loads(env.request("GET", "/api/predict/onlya/x")[2])["replica"] == "B"
    env.source.set(env.standard_table(version=3))
    wait_for(lambda: env.gw.table is not None and env.gw.table.version == 3, 5, what="table version 3")
