"""metadata.rpc.rate_limit (issue 12): the token bucket on a fake clock, table-driven, and the
gateway's 429 with Retry-After for a burst above the limit, with a real server and replica."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from openeas.gateway.routing.ratelimit import TokenBucket
from tests.harness import Server, service_spec

# (rate/s, request times in s, expected waits: 0 = allowed, else seconds until a token)
CASES = [
    # A fresh bucket holds one second's worth (burst = rate = 2): two pass at t=0, the third waits
    # 1/2 s for the next token.
    pytest.param(2.0, [0, 0, 0], [0, 0, 0.5], id="burst-of-one-seconds-worth"),
    # Tokens come back at `rate` per second: at t=0.5 one token (0.5 s x 2/s) is back and taken;
    # the next waits a whole token again, 1/2 s.
    pytest.param(2.0, [0, 0, 0.5, 0.5], [0, 0, 0, 0.5], id="refill-at-rate"),
    # An idle bucket never holds more than its burst: after 10 s still only 2 pass at once.
    pytest.param(2.0, [0, 10, 10, 10], [0, 0, 0, 0.5], id="refill-capped-at-burst"),
    # Below one request per second the burst is still 1: a second request waits 1/0.5 = 2 s.
    pytest.param(0.5, [0, 0], [0, 2.0], id="slow-rate-burst-one"),
]


@pytest.mark.parametrize(("rate", "times", "waits"), CASES)
def test_token_bucket(rate: float, times: list[float], waits: list[float]):
    bucket = TokenBucket(rate)
    assert [round(bucket.take(t), 6) for t in times] == waits


def test_a_burst_above_the_limit_gets_429_with_retry_after(server: Server):
    spec = service_spec("limited")
    spec["metadata"]["rpc"] = {"rate_limit": 5}
    c = server.client
    c.deploy(spec)
    c.wait_ready("limited", 1, timeout_s=60)
    token = c.call_info("limited")["token"]
    url = f"{server.gateway_url}/api/predict/limited/echo"

    def call(_: int) -> requests.Response:
        return requests.post(url, data=b"{}", headers={"Authorization": token}, timeout=10)

    time.sleep(1.1)  # a full bucket: 5 tokens
    t0 = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        burst = list(pool.map(call, range(20)))
    spread_s = time.monotonic() - t0  # the gateway saw every request within this
    codes = sorted(r.status_code for r in burst)
    # 5 tokens, plus what refilled while the 20 requests went out (5/s over the measured spread:
    # well under a second on a quiet machine, so at least 10 of 20 refused there)
    assert 5 <= codes.count(200) <= 5 + int(5 * spread_s) + 1, (codes, spread_s)
    assert codes.count(429) >= 1, codes
    refused = next(r for r in burst if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "at most 5 requests per second (metadata.rpc.rate_limit)" in refused.json()["error"]["message"]
    metrics = requests.get(f"{server.gateway_url}/metrics", timeout=10).text
    line = 'openeas_gateway_requests_total{service="limited",code="429"}'
    assert any(m.startswith(line) and float(m.split()[-1]) == codes.count(429) for m in metrics.splitlines())
    # Within the limit (4 requests/s, one at a time), nothing is refused.
    time.sleep(1.1)
    within = []
    for _ in range(8):
        within.append(call(0).status_code)
        time.sleep(0.25)
    assert within == [200] * 8
