"""The control plane's view of the gateways' counters (`openeas.telemetry.gateway_stats`).

Time windows are tested with a fake clock: each case feeds datagrams (gateway, time, counters)
and reads a window; the arithmetic of every expectation is in a comment. The receiver is tested
once over a real Unix socket.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.gateway.telemetry.stats import answer_samples
from openeas.kernel.clock import FakeClock
from openeas.telemetry.gateway_stats import (
    MAX_DATAGRAM_BYTES,
    GatewayStats,
    MemberSample,
    ReplicaSample,
    ServiceSample,
    decode,
    decode_all,
    encode,
    receive,
    socket_path,
)
from openeas.telemetry.latency import SERVICE_LATENCY_BUCKETS_S

# A datagram: (gateway id, receive time s, uptime s or None, {service: (arrivals, in_flight, held)}).
Datagram = tuple[str, float, float | None, dict[str, tuple[int, int, int]]]


def fed(datagrams: list[Datagram], **kw: float) -> GatewayStats:
    stats = GatewayStats(FakeClock(0.0).now, **kw)
    for gid, t, up, services in datagrams:
        samples = {name: ServiceSample(*values) for name, values in services.items()}
        stats.observe(gid, samples, t, uptime_s=up)
    return stats


def steady(
    gid: str,
    start: float,
    end: float,
    per_tick: int,
    *,
    first: int = 0,
    up: float | None = 0.0,
    in_flight: int = 0,
    held: int = 0,
) -> list[Datagram]:
    """A gateway sending every 0.2 s from ``start`` to ``end``, ``per_tick`` arrivals per datagram."""
    out: list[Datagram] = []
    n = round((end - start) / 0.2)
    for k in range(n + 1):
        uptime = None if up is None else up + k * 0.2
        out.append((gid, start + k * 0.2, uptime, {"svc": (first + k * per_tick, in_flight, held)}))
    return out


# ---- arrival rate ------------------------------------------------------------------------------

RATE_CASES = [
    pytest.param(
        steady("g1", 0.0, 10.0, 2),
        5.0,
        10.0,
        10.0,
        # 2 arrivals per 0.2 s = 10/s, the same in any window
        id="steady-10-per-s",
    ),
    pytest.param([], 60.0, 10.0, None, id="no-data-is-none"),
    pytest.param(
        [("g1", 5.0, 3600.0, {"svc": (1000, 0, 0)})],
        60.0,
        5.0,
        None,
        # an old gateway's first datagram is only a baseline: no interval covered yet
        id="baseline-only-is-none",
    ),
    pytest.param(
        [("g1", 0.0, 3600.0, {"svc": (1000, 0, 0)}), ("g1", 1.0, 3601.0, {"svc": (1010, 0, 0)})],
        60.0,
        1.0,
        10.0,
        # 1000 counted before this control plane saw the gateway: only (1010 - 1000) / 1 s
        id="old-gateway-counted-from-first-datagram",
    ),
    pytest.param(
        [("g1", 0.5, 0.5, {"svc": (5, 0, 0)}), ("g1", 1.0, 1.0, {"svc": (5, 0, 0)})],
        60.0,
        1.0,
        5.0,
        # a gateway 0.5 s old: its counters were 0 at t=0; 5 arrivals over (0, 1] = 5/s
        id="fresh-gateway-counted-from-its-start",
    ),
    pytest.param(
        [
            ("g1", 0.0, None, {"svc": (100, 0, 0)}),
            ("g1", 1.0, None, {"svc": (110, 0, 0)}),
            ("g1", 2.0, None, {"svc": (4, 0, 0)}),
            ("g1", 3.0, None, {"svc": (10, 0, 0)}),
        ],
        60.0,
        3.0,
        20 / 3,
        # +10, then a reset (110 → 4 counts 4, never -106), then +6: 20 arrivals over 3 s
        id="counter-reset-is-not-negative",
    ),
    pytest.param(
        steady("g1", 0.0, 10.0, 2) + steady("g2", 0.0, 10.0, 1),
        5.0,
        10.0,
        15.0,
        # two gateways: 10/s + 5/s
        id="two-gateways-add-up",
    ),
    pytest.param(
        steady("old", 0.0, 5.0, 2) + steady("new", 5.2, 10.0, 2, up=0.0),
        10.0,
        10.0,
        49 / 10 * 2,
        # the gateway restarts under a new id: old counts 25 ticks x 2 = 50 in (0, 5], new 24 x 2 = 48
        # in (5.2, 10] (zero at its start): 98 arrivals over the 10 s window covered
        id="restarted-gateway-keeps-the-window",
    ),
    pytest.param(
        [
            ("g1", 0.0, 0.0, {"svc": (0, 0, 0)}),
            ("g1", 1.0, 1.0, {"svc": (10, 0, 0)}),
            ("g1", 2.5, 2.5, {"svc": (10, 0, 0)}),
        ],
        2.0,
        3.0,
        0.0,
        # no datagram in (1, 2.5) means unchanged, not missing: 0 arrivals in (1, 3] while alive
        id="silence-while-alive-is-unchanged",
    ),
    pytest.param(
        steady("g1", 0.0, 2.0, 2),
        5.0,
        10.0,
        None,
        # its last datagram at t=2 is 8 s old (> stale_s 3 s): nothing covers (5, 10]
        id="gone-gateway-is-no-data",
    ),
    pytest.param(
        steady("g1", 0.0, 6.0, 2),
        5.0,
        10.0,
        10.0,
        # gone since t=6: the window is what it covered, (5, 6]: 5 ticks x 2 = 10 arrivals in 1 s
        id="gone-gateway-counts-while-it-lived",
    ),
]


@pytest.mark.parametrize(("datagrams", "window_s", "now", "expected"), RATE_CASES)
def test_arrival_rate(datagrams: list[Datagram], window_s: float, now: float, expected: float | None) -> None:
    rate = fed(datagrams).arrival_rate("svc", window_s, now)
    if expected is None:
        assert rate is None
    else:
        assert rate == pytest.approx(expected)


def test_arrival_rate_of_an_unknown_service_is_none_not_zero() -> None:
    stats = fed(steady("g1", 0.0, 1.0, 2))
    assert stats.arrival_rate("other", 60.0, 1.0) is None
    assert stats.mean_in_flight("other", 60.0, 1.0) is None


def test_a_service_routed_later_is_counted_from_zero() -> None:
    # g1 reported only "svc" for 2 s; "new" appears at t=2.2 with 3 arrivals: its counter was 0 at
    # g1's previous datagram (t=2.0), so all 3 count: 3 / (2.2 - 2.0) s = 15/s.
    stats = fed(
        [*steady("g1", 0.0, 2.0, 1, up=None), ("g1", 2.2, None, {"svc": (10, 0, 0), "new": (3, 0, 0)})]
    )
    assert stats.arrival_rate("new", 60.0, 2.2) == pytest.approx(15.0)


# ---- mean in flight ----------------------------------------------------------------------------

IN_FLIGHT_CASES = [
    pytest.param(
        [
            ("g1", 0.0, 0.0, {"svc": (0, 2, 0)}),
            ("g1", 5.0, 5.0, {"svc": (0, 4, 0)}),
            ("g1", 10.0, 10.0, {"svc": (0, 4, 0)}),
        ],
        10.0,
        10.0,
        3.0,
        # 2 for 5 s then 4 for 5 s: (10 + 20) / 10
        id="time-weighted",
    ),
    pytest.param(
        [
            ("g1", 0.0, 0.0, {"svc": (0, 2, 0)}),
            ("g1", 5.0, 5.0, {"svc": (0, 4, 0)}),
            ("g1", 10.0, 10.0, {"svc": (0, 4, 0)}),
        ],
        4.0,
        10.0,
        4.0,
        # the window (6, 10] sees only the 4
        id="short-window",
    ),
    pytest.param(
        steady("a", 0.0, 10.0, 0, in_flight=1) + steady("b", 0.0, 10.0, 0, in_flight=2),
        10.0,
        10.0,
        3.0,
        # gateways add up: 1 + 2
        id="two-gateways-add-up",
    ),
    pytest.param(
        steady("a", 0.0, 10.0, 0, in_flight=1) + steady("dead", 0.0, 4.0, 0, in_flight=6),
        10.0,
        10.0,
        3.4,
        # "dead" last sent at t=4 (gone at 10: 6 s > stale 3 s): (1 x 10 + 6 x 4) / 10 = 3.4
        id="gone-gateway-counts-until-its-last-datagram",
    ),
    pytest.param(
        [("g1", 0.0, 0.0, {"svc": (0, 0, 0)})],
        10.0,
        0.0,
        None,
        # one instant: no interval to average over
        id="no-interval-is-none",
    ),
]


@pytest.mark.parametrize(("datagrams", "window_s", "now", "expected"), IN_FLIGHT_CASES)
def test_mean_in_flight(
    datagrams: list[Datagram], window_s: float, now: float, expected: float | None
) -> None:
    mean = fed(datagrams).mean_in_flight("svc", window_s, now)
    if expected is None:
        assert mean is None
    else:
        assert mean == pytest.approx(expected)


# ---- held, current, last seen, staleness ---------------------------------------------------------


@pytest.mark.parametrize(
    ("datagrams", "now", "held"),
    [
        pytest.param([], 1.0, 0, id="never-reported"),
        pytest.param([("g1", 0.0, 0.0, {"svc": (3, 0, 3)})], 1.0, 3, id="one-gateway"),
        pytest.param(
            [("g1", 0.0, 0.0, {"svc": (3, 0, 3)}), ("g1", 0.5, 0.5, {"svc": (3, 1, 0)})],
            1.0,
            0,
            id="released",
        ),
        pytest.param(
            [("g1", 0.0, 0.0, {"svc": (3, 0, 3)}), ("g2", 0.1, 0.1, {"svc": (2, 0, 2)})],
            1.0,
            5,
            id="gateways-add-up",
        ),
        pytest.param(
            [("g1", 0.0, 0.0, {"svc": (3, 0, 3)}), ("g2", 4.0, 4.0, {"svc": (2, 0, 2)})],
            4.0,
            2,
            # g1 last sent at t=0, 4 s ago (> stale 3 s): its 3 held requests are gone with it
            id="gone-gateway-holds-nothing",
        ),
    ],
)
def test_held(datagrams: list[Datagram], now: float, held: int) -> None:
    assert fed(datagrams).held("svc", now) == held


def test_current_and_last_seen() -> None:
    stats = fed([("g1", 0.0, 0.0, {"svc": (3, 1, 2)}), ("g2", 0.5, 0.0, {"svc": (4, 1, 0)})])
    assert stats.current("svc", 1.0) == ServiceSample(arrivals=7, in_flight=2, held=2)
    assert stats.last_seen("svc") == 0.5
    assert stats.last_seen("other") is None
    assert stats.current("svc", 10.0) is None  # both gone
    assert stats.services() == ["svc"]


def test_on_demand_is_called_when_a_datagram_says_requests_are_held() -> None:
    calls: list[str] = []
    stats = GatewayStats(FakeClock(0.0).now, on_demand=calls.append)
    stats.observe("g1", {"a": ServiceSample(1, 0, 0), "b": ServiceSample(1, 0, 1)}, 0.0)
    stats.observe("g1", {"a": ServiceSample(2, 0, 0), "b": ServiceSample(1, 0, 1)}, 0.2)
    stats.observe("g1", {"a": ServiceSample(2, 0, 0), "b": ServiceSample(1, 1, 0)}, 0.4)
    assert calls == ["b", "b"]  # each datagram with b held; none once released


def test_on_demand_is_called_when_a_datagram_says_in_flight_jumped() -> None:
    calls: list[str] = []
    stats = GatewayStats(FakeClock(), on_demand=calls.append)
    stats.observe("g1", {"a": ServiceSample(1, 1, 0), "b": ServiceSample(1, 1, 0)}, 0.0)
    stats.observe("g1", {"a": ServiceSample(3, 3, 0), "b": ServiceSample(1, 1, 0)}, 0.05, jumped=["a"])
    stats.observe("g1", {"a": ServiceSample(3, 3, 0), "b": ServiceSample(1, 1, 0)}, 0.2)
    assert calls == ["a"]  # only the datagram that named it
    assert stats.current("a", 0.2) == ServiceSample(3, 3, 0)


def test_a_failing_on_demand_does_not_lose_the_sample() -> None:
    def boom(service: str) -> None:
        raise RuntimeError("autoscaler bug")

    stats = GatewayStats(FakeClock(0.0).now, on_demand=boom)
    stats.observe("g1", {"svc": ServiceSample(1, 0, 1)}, 0.0)
    assert stats.held("svc", 0.0) == 1


def test_samples_older_than_the_horizon_are_forgotten() -> None:
    # 100 s of changing counters, horizon 10 s: after trimming, the rate over 10 s is intact and
    # no more than ~10 s of samples (50 at 0.2 s, plus the one in force at the cut) are kept.
    stats = fed(steady("g1", 0.0, 100.0, 1), horizon_s=10.0)
    assert stats.arrival_rate("svc", 10.0, 100.0) == pytest.approx(5.0)  # 1 per 0.2 s
    series = stats._gateways["g1"].series["svc"]
    assert len(series.samples) <= 57


def test_unchanged_samples_are_not_stored() -> None:
    stats = fed(steady("g1", 0.0, 100.0, 0, in_flight=2))
    # 501 datagrams with the same counters (the first one at the gateway's start): one sample
    assert len(stats._gateways["g1"].series["svc"].samples) == 1
    assert stats.mean_in_flight("svc", 50.0, 100.0) == pytest.approx(2.0)


# ---- wire format -------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    samples = {"a": ServiceSample(10, 2, 0), "b_1": ServiceSample(0, 0, 7)}
    (datagram,) = encode("gw-1", 12.5, samples)
    assert decode(datagram) == ("gw-1", 12.5, samples, [])


def test_jumped_services_travel_with_their_counters() -> None:
    samples = {f"service_{i:05d}": ServiceSample(i, i % 3, 0) for i in range(3000)}
    jumps = {"service_00001", "service_02999"}
    datagrams = encode("gw", 1.0, samples, jumps)
    assert len(datagrams) > 1
    assert all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    seen: list[str] = []
    for d in datagrams:
        _, _, counters, jumped = decode(d)
        assert set(jumped) <= set(counters)  # each datagram names only the services it carries
        seen += jumped
    assert sorted(seen) == sorted(jumps)
    assert b'"j"' not in encode("gw", 1.0, {"a": ServiceSample(1, 1, 0)})[0]  # none: no key


def test_many_services_are_split_across_datagrams() -> None:
    samples = {f"service_{i:05d}": ServiceSample(i, i % 3, i % 5) for i in range(3000)}
    datagrams = encode("gw", 1.0, samples)
    assert len(datagrams) > 1
    assert all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    merged: dict[str, ServiceSample] = {}
    for d in datagrams:
        merged.update(decode(d)[2])
    assert merged == samples


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        json.dumps({"v": 2, "g": "x", "up": 1, "s": {}}).encode(),
        json.dumps({"v": 1, "g": "x", "up": 1, "s": {"a": [1, 2]}}).encode(),
        b"\xff\xfe",
    ],
    ids=["not-json", "not-an-object", "other-version", "short-sample", "not-utf8"],
)
def test_decode_refuses_what_is_not_a_datagram(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


# ---- the receiver, over a real socket ------------------------------------------------------------


def test_receive_feeds_the_stats_and_ignores_garbage(tmp_path: Path) -> None:
    import socket

    deep = tmp_path / ("d" * 60) / ("e" * 60)  # longer than sun_path: reached through a dir fd
    clock = FakeClock(7.0)
    stats = GatewayStats(clock.now)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(receive(deep, stats, stop))
        path = socket_path(deep)
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            import os

            fd = os.open(path.parent, os.O_PATH)
            try:
                addr = f"/proc/self/fd/{fd}/{path.name}"
                s.sendto(b"garbage", addr)
                for d in encode("gw", 0.1, {"svc": ServiceSample(4, 1, 2)}):
                    s.sendto(d, addr)
            finally:
                os.close(fd)
        for _ in range(100):
            if stats.last_seen("svc") is not None:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task
        assert not path.exists()  # removed on the way out

    asyncio.run(scenario())
    assert stats.current("svc", 7.0) == ServiceSample(4, 1, 2)
    assert stats.last_seen("svc") == 7.0  # stamped with the stats' clock


# ---- per replica: what the drain and scale-in read -----------------------------------------------

R = ReplicaSample


def test_replicas_round_trip_in_the_first_datagram_only() -> None:
    samples = {f"service_{i:05d}": ServiceSample(i, 0, 0) for i in range(3000)}
    replicas = {"svc-r1": R(3, True), "svc-r2": R(0, False)}
    datagrams = encode("gw", 1.0, samples, replicas=replicas)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    assert [decode_all(d).replicas for d in datagrams] == [replicas] + [None] * (len(datagrams) - 1)
    (plain,) = encode("gw", 1.0, {"a": ServiceSample(1, 0, 0)})
    assert decode_all(plain).replicas is None  # a gateway that reports no replicas


# A replica report: (gateway id, receive time s, {replica: (in_flight, routed)}).
Report = tuple[str, float, dict[str, tuple[int, bool]]]


@pytest.mark.parametrize(
    ("reports", "now", "since", "expected"),
    [
        pytest.param([("a", 1.0, {"r": (2, True)})], 1.1, 0.5, R(2, True), id="one-gateway"),
        # Both gateways count: 2 + 3 in flight; routed by b although a no longer routes it.
        pytest.param(
            [("a", 1.0, {"r": (2, False)}), ("b", 1.0, {"r": (3, True)})],
            1.1,
            0.5,
            R(5, True),
            id="gateways-add-up",
        ),
        pytest.param([("a", 1.0, {})], 1.1, 0.5, R(0, False), id="not-named-is-idle"),
        # The report was received at 1.0, before the question at 1.05: not fresh enough yet.
        pytest.param([("a", 1.0, {"r": (0, False)})], 1.1, 1.05, None, id="older-than-the-question"),
        # b reported after the question, a not yet: wait for a (it may still route the replica).
        pytest.param(
            [("a", 1.0, {"r": (0, False)}), ("b", 1.2, {})], 1.2, 1.1, None, id="one-gateway-behind"
        ),
        # a's last datagram was at 1.0; at 5.0 it is gone (stale after 3 s): b alone decides.
        pytest.param(
            [("a", 1.0, {"r": (4, True)}), ("b", 5.0, {"r": (0, False)})],
            5.0,
            4.5,
            R(0, False),
            id="a-dead-gateway-does-not-count",
        ),
        pytest.param([("a", 1.0, {"r": (1, True)})], 9.0, 8.0, None, id="no-gateway-alive"),
        pytest.param([], 1.0, 0.5, None, id="never-heard"),
    ],
)
def test_replica_view(
    reports: list[Report], now: float, since: float, expected: ReplicaSample | None
) -> None:
    stats = GatewayStats(FakeClock(0.0).now)
    for gid, t, replicas in reports:
        stats.observe(gid, {}, t, replicas={rid: R(*v) for rid, v in replicas.items()})
    assert stats.replica("r", now, since=since) == expected


def test_replica_in_flight_sums_live_gateways() -> None:
    stats = GatewayStats(FakeClock(0.0).now)
    stats.observe("a", {}, 1.0, replicas={"r1": R(2, True), "r2": R(1, True)})
    stats.observe("b", {}, 1.0, replicas={"r1": R(3, True)})
    stats.observe("c", {}, 1.0)  # no replica report: counts nothing
    assert stats.replica_in_flight(1.5) == {"r1": 5, "r2": 1}
    stats.observe("b", {}, 4.5, replicas={"r1": R(0, False)})  # a is gone by 4.5 (stale after 3 s)
    assert stats.replica_in_flight(4.5) == {"r1": 0}


def test_the_drain_waits_for_a_report_sent_after_its_question() -> None:
    import inspect
    import time

    from openeas.controller.replica import GatewayView
    from openeas.server import gateway_view

    assert inspect.signature(gateway_view).parameters["timeout_s"].default == 1.0  # docs/architecture.md
    stats = GatewayStats(time.monotonic)
    stats.observe("a", {}, time.monotonic(), replicas={"r": R(0, False)})  # before the question

    async def scenario() -> tuple[GatewayView | None, GatewayView | None]:
        ask = gateway_view(stats, timeout_s=1.0)
        task = asyncio.create_task(ask("r"))
        await asyncio.sleep(0.1)
        assert not task.done()  # the old report does not answer it
        stats.observe("a", {}, time.monotonic(), replicas={"r": R(2, True)})
        fresh = await task
        silent = await gateway_view(stats, timeout_s=0.1)("r")  # no new report within 0.1 s
        return fresh, silent

    assert asyncio.run(scenario()) == (GatewayView(routed=True, in_flight=2), None)


@pytest.mark.parametrize(
    ("now", "busy"),
    [
        # alive at 4 s: its last report (2 in flight) holds until now
        pytest.param(4.0, [2.0, 2.0, 2.0, 2.0], id="alive"),
        # gone at 10 s (silent since 3 s, stale after 3 s): nothing in flight after its last report
        pytest.param(10.0, [2.0, 2.0, 2.0, 0.0], id="gone"),
    ],
)
def test_per_second_is_the_gateways_own_trace(now: float, busy: list[float]) -> None:
    stats = GatewayStats(lambda: now)
    for gid, t, up, services in steady("g1", 0.0, 3.0, 1, in_flight=2):  # 5 requests a second
        stats.observe(gid, {n: ServiceSample(*v) for n, v in services.items()}, t, uptime_s=up)
    arrivals, got = stats.per_second("svc", 0.0, 4)
    assert arrivals == [5, 5, 5, 0]
    assert got == pytest.approx(busy)
    assert stats.per_second("other", 0.0, 2) == ([0, 0], [0.0, 0.0])


# ---- per group member: what the staged rollout reads ---------------------------------------------


def M(codes: dict[str, int], buckets: tuple[int, ...] = (1, 0, 2)) -> MemberSample:
    return MemberSample(codes, buckets)


def test_groups_round_trip_in_the_first_datagram_only() -> None:
    samples = {f"service_{i:05d}": ServiceSample(i, 0, 0) for i in range(3000)}
    groups = {"g": {"old": M({"200": 7}), "new": M({"200": 2, "503": 1}, (0, 3))}, "h": {}}
    datagrams = encode("gw", 1.0, samples, groups=groups)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    assert [decode_all(d).groups for d in datagrams] == [groups] + [None] * (len(datagrams) - 1)
    (plain,) = encode("gw", 1.0, {"a": ServiceSample(1, 0, 0)})
    assert decode_all(plain).groups is None  # a gateway that reports no groups


# A group report: (gateway id, receive time s, {member: (by_code, buckets)}) of group "g".
GroupReport = tuple[str, float, dict[str, tuple[dict[str, int], tuple[int, ...]]]]


@pytest.mark.parametrize(
    ("reports", "now", "expected"),
    [
        pytest.param([("a", 1.0, {"new": ({"200": 3}, (1, 2))})], 1.1, {"new": M({"200": 3}, (1, 2))}, id="one-gateway"),
        # Two gateways' cumulative counters add up, code by code and bucket by bucket.
        pytest.param(
            [("a", 1.0, {"new": ({"200": 3}, (1, 2))}), ("b", 1.0, {"new": ({"200": 1, "500": 2}, (0, 3))})],
            1.1,
            {"new": M({"200": 4, "500": 2}, (1, 5))},
            id="gateways-add-up",
        ),
        # The latest report replaces the one before (it is cumulative, not an increment).
        pytest.param(
            [("a", 1.0, {"new": ({"200": 3}, (3,))}), ("a", 1.2, {"new": ({"200": 5}, (5,))})],
            1.3,
            {"new": M({"200": 5}, (5,))},
            id="latest-report-wins",
        ),
        pytest.param([("a", 1.0, {})], 1.1, {}, id="group-known-nothing-counted"),
        # a's last datagram was at 1.0; at 5.0 it is gone (stale after 3 s): only b counts.
        pytest.param(
            [("a", 1.0, {"new": ({"200": 9}, (9,))}), ("b", 5.0, {"new": ({"200": 1}, (1,))})],
            5.0,
            {"new": M({"200": 1}, (1,))},
            id="a-dead-gateway-does-not-count",
        ),
        pytest.param([("a", 1.0, {"new": ({"200": 1}, (1,))})], 9.0, None, id="no-gateway-alive"),
        pytest.param([], 1.0, None, id="never-heard"),
    ],
)
def test_group_view(reports: list[GroupReport], now: float, expected: dict[str, MemberSample] | None) -> None:
    stats = GatewayStats(FakeClock(0.0).now)
    for gid, t, members in reports:
        stats.observe(gid, {}, t, groups={"g": {m: M(*v) for m, v in members.items()}})
    stats.observe("c", {}, now)  # a gateway without a group report counts nothing
    assert stats.group("g", now) == expected
    assert stats.group("other", now) is None  # a group no gateway routes is unknown


# --- per-service answers: what the console's rates read -------------------------------------------


def test_answers_travel_with_their_service_across_split_datagrams() -> None:
    samples = {f"service_{i:05d}": ServiceSample(i, 0, 0) for i in range(3000)}
    answers = {name: M({"200": 5, "503": 1}, tuple(range(16))) for name in list(samples)[::2]}
    datagrams = encode("gw", 1.0, samples, answers=answers)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    merged: dict[str, MemberSample] = {}
    for d in datagrams:
        got = decode_all(d)
        assert set(got.answers) <= set(got.samples)  # each in the datagram that carries its counters
        merged.update(got.answers)
    assert merged == answers
    (plain,) = encode("gw", 1.0, {"a": ServiceSample(1, 0, 0)})
    assert decode_all(plain).answers == {} and b'"a":{' not in plain  # none answered: no key


# An answers report: (gateway id, receive time s, uptime s or None, {service: (by_code, buckets)}).
AnswersReport = tuple[str, float, float | None, dict[str, tuple[dict[str, int], tuple[int, ...]]]]


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        pytest.param([("a", 1.0, 0.5, {"s": ({"200": 3}, (1, 2))})], {"s": M({"200": 3}, (1, 2))}, id="fresh-from-0"),
        # Two gateways add up, code by code and bucket by bucket.
        pytest.param(
            [("a", 1.0, 0.5, {"s": ({"200": 3}, (1, 2))}), ("b", 1.0, 0.5, {"s": ({"200": 1, "500": 2}, (0, 3))})],
            {"s": M({"200": 4, "500": 2}, (1, 5))},
            id="gateways-add-up",
        ),
        # A gateway older than this control plane (uptime 100 s): its first report is the baseline.
        pytest.param(
            [("a", 1.0, 100.0, {"s": ({"200": 90}, (90,))}), ("a", 1.2, 100.2, {"s": ({"200": 95}, (95,))})],
            {"s": M({"200": 5}, (5,))},
            id="old-gateway-counted-from-its-first-report",
        ),
        # a's last datagram was at 1.0; at 5.0 it is gone, but what it answered stays in the sum.
        pytest.param(
            [("a", 1.0, 0.5, {"s": ({"200": 9}, (9,))}), ("b", 5.0, 0.5, {"s": ({"200": 1}, (1,))})],
            {"s": M({"200": 10}, (10,))},
            id="a-gateway-that-left-keeps-its-answers",
        ),
        pytest.param([], {}, id="never-heard"),
    ],
)
def test_answers_view(reports: list[AnswersReport], expected: dict[str, MemberSample]) -> None:
    stats = GatewayStats(FakeClock(0.0).now)
    for gid, t, up, answers in reports:
        stats.observe(gid, {}, t, uptime_s=up, answers={s: M(*v) for s, v in answers.items()})
    assert stats.answers() == expected


def test_answers_of_a_gateway_forgotten_past_the_horizon_stay_in_the_sum() -> None:
    stats = GatewayStats(FakeClock(0.0).now, horizon_s=10.0)
    stats.observe("a", {"s": ServiceSample(4, 0, 0)}, 1.0, uptime_s=0.5, answers={"s": M({"200": 4}, (4,))})
    stats.observe("b", {"s": ServiceSample(1, 0, 0)}, 30.0, uptime_s=0.5, answers={"s": M({"200": 1}, (1,))})
    assert "a" not in stats._gateways  # trimmed: silent for longer than the horizon
    assert stats.answers() == {"s": M({"200": 5}, (5,))}


def test_the_sender_reports_each_answered_service() -> None:
    metrics = GatewayMetrics()
    metrics.service("idle")
    busy = metrics.service("busy")
    for status, seconds in ((200, 0.002), (200, 0.002), (503, 0.3)):
        busy.finish(status, seconds)
    got = answer_samples(metrics)
    assert list(got) == ["busy"]  # a service not answered yet is not sent
    assert got["busy"].by_code == {"200": 2, "503": 1}
    assert got["busy"].buckets[1] == 2 and got["busy"].buckets[SERVICE_LATENCY_BUCKETS_S.index(0.5)] == 1
    assert len(got["busy"].buckets) == len(SERVICE_LATENCY_BUCKETS_S)
