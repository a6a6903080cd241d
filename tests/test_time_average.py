"""A concurrency gauge read as its time average (autoscaler/time_average.py): Little's law from
two scrapes of the server's histogram of seconds, the raw gauge's samples as the fallback, and
the scraper reading both off a real test server (its vLLM-shaped metrics)."""

from __future__ import annotations

import pytest

from openeas.autoscaler.metrics import ReplicaTarget, ServiceView
from openeas.autoscaler.scrape import ReplicaScraper
from openeas.autoscaler.time_average import (
    MAX_REQUEST_FRACTION,
    TIME_AVERAGES,
    BusyHistogram,
    BusyPoints,
    Interval,
    Point,
    Reading,
    between,
    read,
    register,
)
from openeas.autoscaler.windows import Gauge
from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget
from openeas.testserver import Knobs, ServerThread

RUNNING = "vllm:num_requests_running"
VLLM = TIME_AVERAGES[RUNNING]
RATE = "rate(vllm:request_inference_time_seconds_sum)"
SAMPLES = f"{RUNNING} samples"


def test_the_documented_default_and_the_registry() -> None:
    assert MAX_REQUEST_FRACTION == 0.2
    assert VLLM.histogram == "vllm:request_inference_time_seconds"
    assert (VLLM.sum_name, VLLM.count_name) == (f"{VLLM.histogram}_sum", f"{VLLM.histogram}_count")
    assert TIME_AVERAGES["vllm:num_requests_waiting"].histogram == "vllm:request_queue_time_seconds"
    with pytest.raises(ValueError, match=r"vllm:num_requests_running.*already has a histogram"):
        register(BusyHistogram(RUNNING, "other_seconds"))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # 60 embeddings of 50 ms in 10 s: 3 request-seconds / 10 s = 0.3 running on average; W = 3/60
        (Point(0, 0, 0), Point(10, 3.0, 60), Interval(10, 0.3, 60, 0.05)),
        # 4 requests of 5 s in 10 s: 20 / 10 = 2 running; W = 20/4 = 5 s
        (Point(5, 1.0, 1), Point(15, 21.0, 5), Interval(10, 2.0, 4, 5.0)),
        # nothing finished: 0 running by the histogram, no mean duration
        (Point(0, 2.0, 3), Point(4, 2.0, 3), Interval(4, 0.0, 0, None)),
        (Point(3, 0, 0), Point(3, 1.0, 1), None),  # the same instant: no interval
        (Point(4, 0, 0), Point(3, 1.0, 1), None),  # out of order
    ],
    ids=["short-requests", "long-requests", "idle", "same-instant", "backwards"],
)
def test_between_two_scrapes(a: Point, b: Point, expected: Interval | None) -> None:
    assert between(a, b) == expected


@pytest.mark.parametrize(
    ("scrapes", "window_s", "now", "expected"),
    [
        # raw (sum, count) per second: +0.3 s and +6 requests each second → 0.3 running, W 0.05 s
        ([(t, 100 + 0.3 * t, 1000 + 6 * t) for t in range(11)], 10.0, 10.0, Interval(10, 0.3, 60, 0.05)),
        # a restart at t=5 (the raw counts drop to what it served since): 0.3 + (0.9) over 5 + 5 s
        # t=0..4: +0.3/s; t=5 reads (0.9, 18) = what the new process served: +0.9; t=6..10: +0.3/s
        # busy: 4 x 0.3 + 0.9 + 5 x 0.3 = 3.6 s over 10 s → 0.36; done 24 + 18 + 30 = 72
        ([(t, 100 + 0.3 * t, 1000 + 6 * t) for t in range(5)] + [(t, 0.9 + 0.3 * (t - 5), 18 + 6 * (t - 5))
          for t in range(5, 11)], 10.0, 10.0, Interval(10, 0.36, 72, 0.05)),
        # a 2 s window at 10.5: from the last scrape at or before 8.5 (t=8) to the last (t=10)
        ([(t, 0.3 * t, 6 * t) for t in range(11)], 2.0, 10.5, Interval(2, 0.3, 12, 0.05)),
        # the window reaches before the first scrape: from the oldest one (t=7 to t=10)
        ([(t, 0.3 * t, 6 * t) for t in range(7, 11)], 10.0, 10.0, Interval(3, 0.3, 18, 0.05)),
        ([(0, 1.0, 1)], 10.0, 10.0, None),  # one scrape: no interval yet
    ],
    ids=["steady", "restart", "short-window", "young", "one-scrape"],
)
def test_busy_points_interval(
    scrapes: list[tuple[float, float, float]], window_s: float, now: float, expected: Interval | None
) -> None:
    pts = BusyPoints()
    for t, s, c in scrapes:
        pts.add(t, s, c)
    got = pts.interval(window_s, now)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.seconds, got.mean, got.done, got.request_s) == pytest.approx(
            (expected.seconds, expected.mean, expected.done, expected.request_s)
        )


def _gauge(values: list[float]) -> Gauge:
    g = Gauge()
    for t, v in enumerate(values):
        g.add(float(t), v)
    return g


def _points(seconds_per_s: float, done_per_s: float, n: int = 11) -> BusyPoints:
    p = BusyPoints()
    for t in range(n):
        p.add(float(t), seconds_per_s * t, done_per_s * t)
    return p


@pytest.mark.parametrize(
    ("entry", "samples", "points", "expected"),
    [
        # vLLM embeddings: the gauge reads 0 at every scrape, 6 requests/s of 50 ms finish: 0.3
        (VLLM, _gauge([0] * 11), _points(0.3, 6), Reading(0.3, RATE)),
        # long generations: one 8 s request finished (W = 8 s > 0.2 x 10 s): the gauge's samples,
        # 1 for 8 of the 10 s → 0.8
        (VLLM, _gauge([1] * 8 + [0] * 3), _points(0.8, 0.1), Reading(0.8, SAMPLES)),
        # the larger of the two: a long request runs (the gauge reads 1) while short ones finish
        (VLLM, _gauge([1] * 11), _points(0.3, 6), Reading(1.0, RATE)),
        # idle: nothing finished, the gauge reads 0
        (VLLM, _gauge([0] * 11), _points(0, 0), Reading(0.0, SAMPLES)),
        # the server does not expose the histogram: the gauge's samples (the fallback)
        (VLLM, _gauge([0, 1] * 5 + [0]), None, Reading(0.5, SAMPLES)),
        # a gauge with no registered histogram: its samples
        (None, _gauge([2] * 11), _points(0.3, 6), Reading(2.0, SAMPLES)),
        # the histogram without the gauge: Little's law even for long requests (nothing better)
        (VLLM, None, _points(0.8, 0.1), Reading(0.8, RATE)),
        (VLLM, None, None, None),  # neither: no data
    ],
    ids=["vllm-embeddings", "long-requests", "larger-of-two", "idle", "no-histogram", "unregistered",
         "histogram-only", "nothing"],
)
def test_read(
    entry: BusyHistogram | None, samples: Gauge | None, points: BusyPoints | None, expected: Reading | None
) -> None:
    got = read(entry, RUNNING, samples, points, 10.0, 10.0)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.source == expected.source
        assert got.value == pytest.approx(expected.value)


async def test_the_scraper_reads_the_test_servers_vllm_metrics_as_a_time_average() -> None:
    """Real HTTP: two scrapes of the test server's vLLM-shaped /metrics 10 s apart (virtual
    `now`), with 6 requests of 50 ms served between them: 0.3 running, by the histogram, while
    the gauge read 0 at both scrapes."""
    metric = MetricTarget(kind="custom", target=1, custom_metric=RUNNING)
    policy = AutoscalingPolicy(source="autoscaling", metrics=(metric,), min_replicas=1, max_replicas=2)
    s = ReplicaScraper()
    with ServerThread(Knobs(vllm_metrics=True)) as srv:
        view = ServiceView("svc", policy, (ReplicaTarget("r1", "127.0.0.1", srv.port, None),))
        await s.collect([view], 0.0)
        for _ in range(6):
            srv.state.served(0.5)  # 6 x 0.5 s = 3 request-seconds; W 0.5 s ≤ 0.2 x 10 s
        await s.collect([view], 10.0)
        await s.close()
    assert s.total(view, metric, 10.0, 10.0) == pytest.approx(0.3)  # 3 s / 10 s
    assert s.reading(view, metric, 10.0, 10.0) == RATE
    # the 2 s panic window at 10 s spans the same two scrapes (the oldest is the start): 3 / 10
    assert s.total(view, metric, 2.0, 10.0) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("r2_histogram", "now", "total", "reading"),
    [
        # r1 by Little's law 0.3, r2 from its samples 0.5: avg 0.4 x 2 Ready = 0.8
        (False, 10.0, 0.8, f"{RATE} + {SAMPLES}"),
        # both by the histogram: r1 0.3, r2 the larger of 0.3 and its samples' 0.5: 0.8
        (True, 10.0, 0.8, RATE),
        # read last at t=10; at 21 both are stale (> 10 s): no data, never 0
        (True, 21.0, None, None),
    ],
    ids=["mixed", "both-by-histogram", "stale"],
)
def test_the_scraper_totals_and_names_each_replicas_reading(
    r2_histogram: bool, now: float, total: float | None, reading: str | None
) -> None:
    """Pure: the scraper's windows filled by hand (as collect() fills them), two Ready replicas."""
    metric = MetricTarget(kind="custom", target=1, custom_metric=RUNNING)
    policy = AutoscalingPolicy(source="autoscaling", metrics=(metric,), min_replicas=1, max_replicas=2)
    view = ServiceView("svc", policy, tuple(ReplicaTarget(r, "127.0.0.1", 1, None) for r in ("r1", "r2")))
    s = ReplicaScraper()
    s.gauges[("r1", RUNNING)] = _gauge([0] * 11)
    s.busy[("r1", RUNNING)] = _points(0.3, 6)
    s.gauges[("r2", RUNNING)] = _gauge([0, 1] * 5 + [0])
    if r2_histogram:
        s.busy[("r2", RUNNING)] = _points(0.3, 6)
    got = s.total(view, metric, 10.0, now)
    assert got == (pytest.approx(total) if total is not None else None)
    assert s.reading(view, metric, 10.0, now) == reading


@pytest.mark.parametrize(
    ("reading", "shown"),
    [(RATE, f"read as {RATE}"), (None, None)],
    ids=["time-average", "gateway-metric"],
)
def test_openeas_autoscale_says_which_reading(reading: str | None, shown: str | None) -> None:
    from openeas.cli import render

    metric = {"metric": f"custom:{RUNNING}", "value": 0.3, "target": 0.5, "recommendation": 1,
              "unit": "value of the scraped metric per replica", "reading": reading}  # fmt: skip
    with render.out.capture() as cap:
        render.out.print(render.autoscaling_grid({"metrics": [metric]}))
    text = " ".join(cap.get().split())
    assert f"Metric custom:{RUNNING} 0.30 / target 0.5 per replica → 1 replicas" in text
    assert (shown in text) if shown else ("read as" not in text)
