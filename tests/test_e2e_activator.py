"""End to end: scale from zero through a real server, its gateway process and test-server replicas.

A service scaled to 0 holds its requests (a streamed one and one with a body among them), refuses
the burst beyond its hold queue with 429, and answers every held request once it is scaled to 1;
a request held past the hold timeout gets 503. Separately, a real gateway process sends its
counters to a real `GatewayStats`, which sees arrivals, in-flight and held requests of real
traffic within 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.telemetry.gateway_stats import GatewayStats, ServiceSample, receive
from tests.conftest_gateway import LoopThread, free_port
from tests.harness import Server, service_spec, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
PROMPT = " ".join(f"word{i}" for i in range(40))  # a body the replica must see whole


def gateway_metric(srv: Server, name: str, service: str) -> float:
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    m = re.search(rf'^{name}{{service="{service}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def chat(srv: Server, service: str, token: str, *, stream: bool, timeout_s: float = 60) -> requests.Response:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "stream": stream}
    return requests.post(
        f"{srv.gateway_url}/api/predict/{service}{CHAT}",
        json=body,
        headers={"Authorization": token},
        stream=stream,
        timeout=timeout_s,
    )


def test_scaled_to_zero_requests_are_held_then_answered_and_a_burst_gets_429(server: Server) -> None:
    c = server.client
    spec = service_spec("wake", args="--tokens-per-s 40")
    spec["metadata"]["rpc"] = {"max_queue_size": 4, "hold_timeout_ms": 60000}
    c.deploy(spec)
    c.wait_ready("wake", 1, timeout_s=60)
    token = c.call_info("wake")["token"]
    direct = chat(server, "wake", token, stream=False)
    assert direct.status_code == 200
    prompt_tokens = direct.json()["usage"]["prompt_tokens"]  # what the replica counts in PROMPT

    c.scale("wake", 0)
    wait_for(lambda: not c.describe("wake")["replicas"], 30, what="replicas of wake gone")

    pool = ThreadPoolExecutor(max_workers=8)
    streamed = pool.submit(lambda: chat(server, "wake", token, stream=True))
    wait_for(lambda: gateway_metric(server, "openeas_gateway_held_requests", "wake") == 1, 10, what="held")
    # A burst beyond the queue (4): 3 more fit, the other 3 are refused at once.
    burst = [pool.submit(chat, server, "wake", token, stream=False) for _ in range(6)]
    refused = [f.result(timeout=10) for f in _first_done(burst, 3, timeout_s=10)]
    assert [r.status_code for r in refused] == [429] * 3
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert refused[0].json()["error"]["code"] == "hold_queue_full"
    assert gateway_metric(server, "openeas_gateway_held_requests", "wake") == 4
    assert not streamed.done()  # still held: nothing was dropped, nothing answered yet

    c.scale("wake", 1)  # a replica starts; the routing push releases the held requests
    held = [f.result(timeout=60) for f in burst if f.result(timeout=60).status_code != 429]
    assert [r.status_code for r in held] == [200] * 3
    assert {r.json()["usage"]["prompt_tokens"] for r in held} == {prompt_tokens}  # bodies kept whole
    r = streamed.result(timeout=60)
    assert r.status_code == 200
    events = [line for line in r.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) >= 3  # streamed in pieces after the release
    pool.shutdown()

    assert gateway_metric(server, "openeas_gateway_held_requests_total", "wake") == 4
    assert gateway_metric(server, "openeas_gateway_held_requests_released_total", "wake") == 4
    assert gateway_metric(server, "openeas_gateway_hold_overflow_total", "wake") == 3
    assert gateway_metric(server, "openeas_gateway_hold_wait_seconds_count", "wake") == 4
    assert gateway_metric(server, "openeas_gateway_held_requests", "wake") == 0
    # The server receives the gateway's counters on DATA/run/control.sock.
    assert stat.S_ISSOCK((server.data_dir / "run" / "control.sock").stat().st_mode)


def _first_done(futures: list[Any], n: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [f for f in futures if f.done()]
        if len(done) >= n:
            return done
        time.sleep(0.02)
    raise AssertionError(f"{n} of the burst were not answered within {timeout_s} s")


def test_a_request_held_past_the_hold_timeout_gets_503_and_a_stopped_service_answers_at_once(
    server: Server,
) -> None:
    c = server.client
    spec = service_spec("never", replicas=0)
    spec["metadata"]["rpc"] = {"hold_timeout_ms": 1000}
    c.deploy(spec)
    token = c.call_info("never")["token"]
    t0 = time.monotonic()
    r = chat(server, "never", token, stream=False)
    took = time.monotonic() - t0
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_ready_replica"
    assert "within 1 s (hold_timeout_ms)" in r.json()["error"]["message"]
    assert 1.0 <= took < 3.0, took
    assert gateway_metric(server, "openeas_gateway_held_requests_timed_out_total", "never") == 1

    c.stop("never")
    wait_for(
        lambda: chat(server, "never", token, stream=False).json()["error"]["code"] == "service_stopped",
        10,
        what="the gateway to know the service is stopped",
    )
    t0 = time.monotonic()
    r = chat(server, "never", token, stream=False)
    # at once: a held request takes at least the hold timeout, 1 s (above)
    assert r.json()["error"]["code"] == "service_stopped" and time.monotonic() - t0 < 1.0


# ---- the control plane's view of real traffic --------------------------------------------------------


@pytest.fixture
def replica() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.testserver", "--port", str(port), "--latency-ms", "3000"], cwd=ROOT
    )
    wait_for(lambda: _answers(port), 20, what="test server")
    yield port
    proc.kill()
    proc.wait()


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_gateway_stats_sees_real_traffic_within_half_a_second(tmp_path: Path, replica: int) -> None:
    routing = tmp_path / "routing.json"
    upstream = {"replica_id": "r1", "host": "127.0.0.1", "port": replica}
    routes = {
        "busy": {"token": None, "upstreams": [upstream]},
        "cold": {"token": None, "upstreams": [], "hold_timeout_s": 30},
    }
    routing.write_text(json.dumps({"version": 1, "routes": routes}))
    stats_dir = tmp_path / "cp"
    lt = LoopThread()
    stats = GatewayStats(time.monotonic)
    demand: list[tuple[str, float]] = []
    stats.on_demand = lambda service: demand.append((service, time.monotonic()))
    stop = asyncio.Event()
    receiver = asyncio.run_coroutine_threadsafe(receive(stats_dir, stats, stop), lt.loop)
    port = free_port()
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openeas.gateway",
            "--port",
            str(port),
            "--routing-file",
            str(routing),
            "--stats-socket",
            str(stats_dir / "run" / "control.sock"),
        ],
        cwd=ROOT,
    )
    try:
        wait_for(lambda: _answers_gateway(port), 20, what="gateway")

        def seen(service: str, want: ServiceSample) -> float:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = lt.run(_current(stats, service))
                if got == want:
                    return time.monotonic()
                time.sleep(0.01)
            raise AssertionError(f"{service}: {lt.run(_current(stats, service))} != {want}")

        def gateway_shows(name: str, service: str, value: int) -> float:
            """When the gateway's own /metrics first shows it: the anchor of the control plane's
            delay (the clients' connections on a loaded machine are not the push's)."""
            line = f'openeas_gateway_{name}{{service="{service}"}} {value}'
            deadline = time.monotonic() + 10
            while line not in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text:
                assert time.monotonic() < deadline, f"the gateway never showed {line}"
                time.sleep(0.01)
            return time.monotonic()

        pool = ThreadPoolExecutor(max_workers=4)
        for _ in range(3):  # 3 requests of 3 s each: in flight together
            pool.submit(
                requests.post, f"http://127.0.0.1:{port}/api/predict/busy/echo", data=b"x", timeout=10
            )
        t0 = gateway_shows("in_flight_requests", "busy", 3)
        busy_after = seen("busy", ServiceSample(arrivals=3, in_flight=3, held=0)) - t0
        t1 = time.monotonic()
        pool.submit(requests.get, f"http://127.0.0.1:{port}/api/predict/cold/x", timeout=10)
        t2 = gateway_shows("held_requests", "cold", 1)
        held_after = seen("cold", ServiceSample(arrivals=1, in_flight=0, held=1)) - t2
        print(
            f"GatewayStats saw in-flight {busy_after * 1000:.0f} ms and held {held_after * 1000:.0f} ms "
            "after the gateway's /metrics"
        )
        assert busy_after < 0.5 and held_after < 0.5
        cold = [t for s, t in demand if s == "cold"]
        assert cold and cold[0] - t2 < 0.5  # on_demand woke for the held request
        # ... and, before it, for busy's in-flight jump (0 -> 3: the 2nd request is a jump)
        assert [s for s, t in demand if t < t1] == ["busy"]
        rate = lt.run(_rate(stats, "busy"))
        assert rate is not None and rate > 0
        seen("busy", ServiceSample(arrivals=3, in_flight=0, held=0))  # answered after 3 s
        pool.shutdown(wait=False, cancel_futures=True)
    finally:
        gw.terminate()
        gw.wait(15)
        lt.loop.call_soon_threadsafe(stop.set)
        receiver.result(5)
        lt.stop()


async def _current(stats: GatewayStats, service: str) -> ServiceSample | None:
    return stats.current(service, stats.clock())  # read on the receiver's loop


async def _rate(stats: GatewayStats, service: str) -> float | None:
    return stats.arrival_rate(service, 10.0, stats.clock())


def _answers_gateway(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
