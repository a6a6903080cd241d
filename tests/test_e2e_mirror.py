"""End to end: mirroring through a real server, gateway and test-server replicas. A 5% mirror
sends about 5% copies to the candidate (a binomial bound) and clients only ever see the primary;
a slow candidate (the test server's latency knob) or a broken one (failure rate 1) changes
neither the primary's p90 beyond noise nor a single client answer; a streamed request with a
chunked body is mirrored whole without holding the primary; `group compare` reports the pairs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from openeas.telemetry.coldstart import nearest_rank
from tests.harness import (
    Server,
    new_server,
    service_spec,
    stop_and_reap,
    wait_for,
)

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
SERVICES = {
    "prim": "--model-name prim",
    "shadow": "--model-name shadow",
    "slow": "--model-name slow --latency-ms 400",  # every copy takes 0.4 s: they pile up
    # every copy takes 3 s: a copy that held the client's stream could not hide in a loaded
    # machine's noise (0.4 s could: a streamed answer alone took over 0.4 s on a busy CI)
    "slower": "--model-name slower --latency-ms 3000",
    "broken": "--model-name broken --failure-rate 1",  # every copy is a 500
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = new_server(tmp_path_factory.mktemp("mirror") / "data").start()
    try:
        c = server.client
        for name, args in SERVICES.items():
            c.deploy(service_spec(name, args=args))
        for name in SERVICES:
            c.wait_ready(name, 1, timeout_s=90)
        yield server
    finally:
        stop_and_reap(server)


def chat(s: requests.Session, info: dict[str, str], **body: Any) -> requests.Response:
    payload = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4, **body}
    return s.post(info["endpoint"] + CHAT, json=payload, headers={"Authorization": info["token"]}, timeout=10)


def mirrored(srv: Server, group: str, service: str) -> dict[str, Any]:
    stats: dict[str, Any] = srv.client.group(group)["stats"][service]["mirror"]
    return stats


def test_a_5_percent_mirror_copies_about_5_percent_and_clients_see_only_the_primary(srv: Server) -> None:
    c = srv.client
    c.group_create(
        {"name": "shadowing", "routes": [{"service": "prim", "weight": 1000}, {"service": "shadow", "mirror_weight": 5}]}
    )
    info = c.group_call_info("shadowing")
    n = 2000
    with requests.Session() as s:
        for _ in range(n):
            r = chat(s, info)
            assert r.status_code == 200 and r.json()["model"] == "prim"  # never the candidate's answer
    wait_for(lambda: mirrored(srv, "shadowing", "shadow")["in_flight"] == 0, 10, what="copies answered")
    m = mirrored(srv, "shadowing", "shadow")
    # Copies ~ Binomial(2000, 0.05): mean 100, sd sqrt(2000 * 0.05 * 0.95) ≈ 9.7; 4 sd either way.
    assert 61 <= m["requests"] <= 139, m
    assert m["success"] == 1.0 and not m["dropped"]
    compare = c.group_compare("shadowing")["candidates"]["shadow"]
    assert compare["pairs"] == m["requests"]
    assert compare["status_agreement"] == 1.0
    # The bodies differ in one field, the model name: the sample shows it.
    assert compare["body_agreement"] == 0.0 and '"model":"shadow"' in compare["samples"][0]["mirror_body"]


def primary_latencies(srv: Server, info: dict[str, str], n: int) -> tuple[list[float], list[int]]:
    latencies, statuses = [], []
    with requests.Session() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            r = chat(s, info)
            latencies.append(time.perf_counter() - t0)
            statuses.append(r.status_code if r.json().get("model") == "prim" else -1)
    return latencies, statuses


@pytest.mark.parametrize("candidate", ["slow", "broken"])
def test_a_slow_or_broken_candidate_neither_slows_nor_fails_the_primary(srv: Server, candidate: str) -> None:
    c = srv.client
    name = f"guard_{candidate}"
    c.group_create({"name": name, "routes": [{"service": "prim", "weight": 1000}, {"service": candidate}]})
    info = c.group_call_info(name)
    n = 600
    primary_latencies(srv, info, 50)  # warm connections
    base, base_status = primary_latencies(srv, info, n)
    c.group_weights(name, mirror_weights={candidate: 50})  # half the requests are copied
    with_mirror, statuses = primary_latencies(srv, info, n)
    assert set(base_status) == {200} and set(statuses) == {200}  # not a single client error
    # A copy that held the primary would add 400 ms (slow) to half the requests, so to the p90;
    # a loaded machine stalls a request now and then (the p99 of two windows a few seconds apart
    # can differ twofold), not one in ten by 200 ms.
    without, with_copies = sorted(base), sorted(with_mirror)
    figures = {f"p{round(q * 100)}": (nearest_rank(without, q), nearest_rank(with_copies, q)) for q in (0.5, 0.9, 0.99)}
    print(f"primary latency (s), without and with copies: {figures}")
    assert figures["p90"][1] < figures["p90"][0] + 0.2, figures
    wait_for(lambda: mirrored(srv, name, candidate)["in_flight"] == 0, 20, what="copies answered")
    m = mirrored(srv, name, candidate)
    if candidate == "broken":
        assert m["requests"] > 200 and m["success"] == 0.0  # every copy failed, at the copy
        compare = c.group_compare(name)["candidates"][candidate]
        assert compare["status_agreement"] == 0.0
        assert compare["samples"][-1]["status"] == 200 and compare["samples"][-1]["mirror_status"] == 500
    else:
        # Copies take 0.4 s and about 300 were made in a few seconds: the in-flight bound (32)
        # dropped the excess rather than let copies pile up.
        assert m["requests"] > 0 and m["dropped"].get("in_flight_limit", 0) > 0, m
        assert m["p50_ms"] >= 400


def test_a_streamed_request_with_a_chunked_body_is_mirrored_whole_without_holding_the_primary(srv: Server) -> None:
    c = srv.client
    c.group_create(
        {"name": "streams", "routes": [{"service": "prim", "weight": 1000}, {"service": "slower", "mirror_weight": 100}]}
    )
    info = c.group_call_info("streams")
    words = " ".join(f"w{i}" for i in range(300))

    def body() -> Iterator[bytes]:  # a generator: requests sends it chunked
        text = ('{"messages": [{"role": "user", "content": "' + words + '"}], "max_tokens": 5, "stream": true}').encode()
        for i in range(0, len(text), 100):
            yield text[i : i + 100]

    t0 = time.perf_counter()
    r = requests.post(
        info["endpoint"] + CHAT,
        data=body(),
        headers={"Authorization": info["token"], "Content-Type": "application/json"},
        stream=True,
        timeout=10,
    )
    events = [line for line in r.iter_lines() if line.startswith(b"data: ")]
    took = time.perf_counter() - t0
    assert r.status_code == 200 and events[-1] == b"data: [DONE]" and len(events) >= 5
    assert took < 2.0, took  # the copy to the slower candidate (3 s) did not hold the stream
    wait_for(lambda: mirrored(srv, "streams", "slower")["requests"] == 1, 15, what="the copy answered")
    m = mirrored(srv, "streams", "slower")
    assert m["success"] == 1.0  # the candidate parsed the copy's body: sent whole, with a Content-Length
    compare = c.group_compare("streams")["candidates"]["slower"]
    assert compare["pairs"] == 1 and compare["status_agreement"] == 1.0
    assert compare["latency_delta_ms_mean"] > 1000  # the candidate took its 3 s; the client did not
