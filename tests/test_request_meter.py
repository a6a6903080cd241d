"""The request meter (controller/request_meter.py): the gateways' arrival counters, written to
the store's ``request_usage`` (a real SQLite store; the counters fed by hand on a fake clock)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openeas.controller.request_meter import ENV_INTERVAL, INTERVAL_S, RequestMeter, meter_interval
from openeas.kernel.clock import FakeClock
from openeas.store import Store
from openeas.telemetry.gateway_stats import GatewayStats, ServiceSample


def test_documented_default() -> None:
    assert (INTERVAL_S, meter_interval({})) == (10.0, 10.0)


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        pytest.param("0.5", 0.5, id="short"),
        pytest.param("0", None, id="zero"),
        pytest.param("fast", None, id="not-a-number"),
        pytest.param("nan", None, id="nan"),
        pytest.param("601", None, id="too-long"),
    ],
)
def test_the_interval_from_the_environment(raw: str, ok: float | None) -> None:
    if ok is not None:
        assert meter_interval({ENV_INTERVAL: raw}) == ok
    else:
        with pytest.raises(ValueError, match=f"{ENV_INTERVAL}: '{raw}'; must be seconds in"):
            meter_interval({ENV_INTERVAL: raw})


def test_each_look_writes_what_the_gateways_counted_since_the_last(tmp_path: Path, store_url: str | None) -> None:
    """On SQLite and PostgreSQL (the store_url fixture)."""
    clock = FakeClock(start=100.0)
    stats = GatewayStats(clock.now)
    store = Store(tmp_path, url=store_url)
    meter = RequestMeter(store, stats, clock)
    meter._since = clock.now()  # as run() does at the server's start
    # two gateways, one fresh (its counters were 0 at its start): 30 + 5 requests, then 20 more
    stats.observe("g1", {"a": ServiceSample(30, 1, 0)}, 101.0, uptime_s=1.0)
    stats.observe("g2", {"a": ServiceSample(5, 0, 0), "b": ServiceSample(7, 0, 0)}, 101.0, uptime_s=0.5)
    asyncio.run(clock.advance(5.0))  # 105
    assert meter.tick() == {"a": 35, "b": 7}
    stats.observe("g1", {"a": ServiceSample(50, 0, 0)}, 106.0)
    stats.observe("g2", {"a": ServiceSample(5, 0, 0), "b": ServiceSample(7, 0, 0)}, 106.0)
    asyncio.run(clock.advance(5.0))
    assert meter.tick() == {"a": 20}  # b: nothing new, nothing written
    asyncio.run(clock.advance(5.0))
    assert meter.tick() == {}
    rows = [(r.service, r.hour, r.requests) for r in store.request_usage()]
    hour = float(int(clock.wall() // 3600) * 3600)
    assert rows == [("a", hour, 55), ("b", hour, 7)]
    assert [r.service for r in store.request_usage(service="b")] == ["b"]
    assert store.request_usage(since=hour + 3600) == []  # the hour ended before
