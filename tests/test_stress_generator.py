"""The load generator on a virtual clock against a simulated service: the schedule is open loop,
latency counts from the due time (no coordinated omission), closed loop keeps N in flight, and
the run's request cap and stop requests hold."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from openeas.kernel.clock import FakeClock
from openeas.stress.fake import SimulatedService
from openeas.stress.generator import Generator, arrival_offsets
from openeas.stress.histo import Histo
from openeas.stress.plan import Arrival


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("rate", "duration", "sent"),
    [
        (100.0, 2.0, 200),  # due at 0, 10 ms, ..., 1990 ms
        (7.0, 1.0, 7),  # 0, 1/7, ..., 6/7
        (1000.0, 0.5, 500),
    ],
    ids=["100/s", "7/s", "1000/s"],
)
def test_constant_arrivals_send_on_schedule(rate: float, duration: float, sent: int) -> None:
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=10_000, service_s=0.001)
    gen = Generator(svc, clock, 1)

    w = run(gen.rate_step(rate, duration, Arrival.CONSTANT))

    assert w.sent == sent and w.record.sent == sent
    gaps = [b - a for a, b in itertools.pairwise(svc.sent_times)]
    assert max(gaps) == pytest.approx(1 / rate) and min(gaps) == pytest.approx(1 / rate)
    assert w.end - w.start == pytest.approx(duration)


def test_poisson_arrivals_have_the_offered_mean_rate() -> None:
    # 20,000 exponential gaps of mean 1/500 s: their mean is within 2% of 2 ms (5 sigma ~ 3.5%)
    offsets = arrival_offsets(Arrival.POISSON, 500.0, random.Random(1))
    times = [next(offsets) for _ in range(20_000)]
    assert 20_000 / times[-1] == pytest.approx(500.0, rel=0.02)
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    # exponential: the median gap is ln 2 / rate = 1.386 ms
    assert gaps[len(gaps) // 2] == pytest.approx(0.6931 / 500, rel=0.05)


def test_latency_counts_from_the_due_time_not_the_send() -> None:
    """A transport that sends every request 40 ms late (a saturated client) must not hide the
    delay: 10 ms of service + 40 ms late = 50 ms latency."""
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=100, service_s=0.010, send_lag_s=0.040)
    gen = Generator(svc, clock, 1)

    w = run(gen.rate_step(50.0, 1.0, Arrival.CONSTANT))
    run(gen.drain(5))

    assert w.record.ok == 50
    assert w.record.latency.percentile_ms(50) == pytest.approx(50.0, rel=0.01)


def test_open_loop_keeps_sending_while_the_service_is_stuck() -> None:
    """One server of 1 s per request: a closed loop would send 1 request per second; open loop
    sends all 100 due in the second, and their latencies grow as the queue does."""
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=1, service_s=1.0)
    gen = Generator(svc, clock, 1)

    w = run(gen.rate_step(100.0, 1.0, Arrival.CONSTANT))

    assert w.sent == 100 and w.ok_done <= 1
    # the requests still queued count with their age so far: the last one due at 0.99 s is 0.01 s
    # old, the first ~1 s old, so the median pending age is ~0.5 s.
    h = w.record.latency_with_pending(clock.now())
    assert h.count == 100 and h.percentile_ms(50) == pytest.approx(500, rel=0.05)


def test_closed_loop_keeps_the_concurrency_in_flight() -> None:
    # 4 in flight, 100 ms each → 40 req/s for 2 s = 80 answers; 4 more are in flight at the end
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=100, service_s=0.1)
    gen = Generator(svc, clock, 3)

    w = run(gen.concurrency_step(4, 2.0))

    assert w.ok_done == pytest.approx(80, abs=4)
    assert svc.in_flight() <= 4
    assert w.record.latency.percentile_ms(99) == pytest.approx(100, rel=0.01)


def test_request_budget_caps_the_run() -> None:
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=100, service_s=0.001)
    gen = Generator(svc, clock, 1, budget=30)

    w = run(gen.rate_step(100.0, 1.0, Arrival.CONSTANT))

    assert svc.sent_total == 30 and w.record.sent == 30 and gen.capped


def test_stop_ends_a_step_early() -> None:
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=100, service_s=0.001)
    gen = Generator(svc, clock, 1)
    clock.call_at(clock.now() + 0.25, gen.stop)

    w = run(gen.rate_step(100.0, 10.0, Arrival.CONSTANT))

    assert gen.stopped and 20 <= w.sent <= 30 and w.end - w.start < 0.5


def test_errors_are_counted_by_status_and_kept_out_of_the_latency() -> None:
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=100, service_s=0.01, fail_every=4)
    gen = Generator(svc, clock, 1)

    w = run(gen.rate_step(100.0, 1.0, Arrival.CONSTANT))
    run(gen.drain(5))

    assert dict(w.record.by_status) == {"200": 75, "500": 25}
    assert w.record.latency.count == 75


@pytest.mark.parametrize(
    ("values_ms", "p50", "p99"),
    [
        ([1.0] * 99 + [100.0], 1.0, 1.0),  # p99 of 100 values is the 99th: still 1 ms
        ([float(i) for i in range(1, 1001)], 500.0, 990.0),
    ],
    ids=["one-outlier", "uniform"],
)
def test_histogram_percentiles(values_ms: list[float], p50: float, p99: float) -> None:
    h = Histo()
    for v in values_ms:
        h.record_s(v / 1000)
    assert h.percentile_ms(50) == pytest.approx(p50, rel=0.002)
    assert h.percentile_ms(99) == pytest.approx(p99, rel=0.002)
    assert Histo.decode(h.encode()).percentile_ms(99) == h.percentile_ms(99)
    assert Histo().summary()["p99"] is None
