"""A concurrency gauge read as its time average, by Little's law, from a histogram the same
server exposes.

A gauge such as ``vllm:num_requests_running`` is a point value. Read once per scrape round it
misses requests shorter than the round, and vLLM's is worse: its engine publishes the gauge
after each step, when a one-step request (an embedding) has already left the running set, so it
reads 0 under any sampling rate (measured: docs/autoscaling.md, "Time-averaged gauges"). The
same server also keeps a histogram of the seconds each request spent in that state
(``vllm:request_inference_time_seconds``). Between two scrapes ``a`` and ``b``, the increase of
its ``_sum`` is the request-seconds spent in the state by the requests that left it, so

    mean number in the state over [a, b] = Δ_sum / (b.t - a.t)           (Little's law, L = λ·W)
    mean seconds per request (W)         = Δ_sum / Δ_count

The first is exact up to the requests that straddle ``a`` or ``b``: a request is counted when it
ends, so the error is at most about W / (b.t - a.t) of the reading. The histogram is therefore
used only while W is short against the interval (:data:`MAX_REQUEST_FRACTION`); long requests
(an LLM generating for seconds) are what a gauge sample sees well, and the gauge is read then.
When the histogram is used, the reading is the larger of the two (each misses what the other
sees: the histogram the requests still running, the samples the requests between them).

:data:`TIME_AVERAGES` is the registry "gauge → its histogram of seconds", by name; a gauge not
in it, or a server that does not expose the histogram, is read from its samples (the fallback).
Everything here is pure: points in, a reading out; times are seconds on the collector's clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from openeas.autoscaler.windows import Gauge

MAX_REQUEST_FRACTION = 0.2
"""Little's law is used while the mean request (W) lasts at most this fraction of the interval
between the two scrapes: the straddling requests then move the reading by at most about 20%
(and by less on average: the ones that end inside the interval and the ones that end after it
cancel in a steady load). With the default 10 s metric window: requests up to 2 s."""


@dataclass(frozen=True)
class BusyHistogram:
    """A gauge of requests in some state, and the histogram of seconds each request spent in it."""

    gauge: str  # Prometheus name of the gauge, e.g. vllm:num_requests_running
    histogram: str  # Prometheus name of the histogram; its `_sum` (seconds) and `_count` are read

    @property
    def sum_name(self) -> str:
        return f"{self.histogram}_sum"

    @property
    def count_name(self) -> str:
        return f"{self.histogram}_count"


TIME_AVERAGES: dict[str, BusyHistogram] = {}


def register(entry: BusyHistogram) -> None:
    """Add a gauge's histogram to the registry; a gauge registered twice is an error."""
    if entry.gauge in TIME_AVERAGES:
        known = TIME_AVERAGES[entry.gauge].histogram
        raise ValueError(f"gauge {entry.gauge!r} already has a histogram: {known!r}")
    TIME_AVERAGES[entry.gauge] = entry


# vLLM (v1 engine, 0.32 checked): the seconds a request spent RUNNING (prefill + decode), and
# the seconds it spent WAITING in the scheduler's queue.
register(BusyHistogram("vllm:num_requests_running", "vllm:request_inference_time_seconds"))
register(BusyHistogram("vllm:num_requests_waiting", "vllm:request_queue_time_seconds"))


@dataclass(frozen=True)
class Point:
    """One scrape of a histogram, its counts added up since the collector first read it."""

    t: float  # seconds, collector clock
    busy_s: float  # request-seconds in the state (the `_sum`), cumulative
    done: float  # requests that left the state (the `_count`), cumulative


@dataclass(frozen=True)
class Interval:
    """What two scrapes say: the mean number in the state and the mean seconds per request."""

    seconds: float  # b.t - a.t
    mean: float  # requests in the state, time-averaged over the interval
    done: float  # requests that left the state in the interval
    request_s: float | None  # mean seconds per request; None when none left the state


def between(a: Point, b: Point) -> Interval | None:
    """The interval ``[a.t, b.t]``; None when it is empty (the same scrape, or out of order)."""
    dt = b.t - a.t
    if dt <= 0:
        return None
    busy, done = max(0.0, b.busy_s - a.busy_s), max(0.0, b.done - a.done)
    return Interval(dt, busy / dt, done, busy / done if done > 0 else None)


class BusyPoints:
    """Scrapes of one replica's histogram, kept for ``horizon_s``; a drop of ``_sum`` or
    ``_count`` means the server restarted, and its counts start again from zero."""

    def __init__(self, horizon_s: float = 900.0) -> None:
        self.horizon_s = horizon_s
        self.points: deque[Point] = deque()
        self._raw: tuple[float, float] | None = None  # the last (sum, count) as read

    def add(self, t: float, raw_sum: float, raw_count: float) -> None:
        p = self.points
        if p and t < p[-1].t:
            return  # out of order: ignored
        if self._raw is None or not p:
            point = Point(t, 0.0, 0.0)
        else:
            last_sum, last_count = self._raw
            restarted = raw_sum < last_sum or raw_count < last_count
            d_sum = raw_sum if restarted else raw_sum - last_sum
            d_count = raw_count if restarted else raw_count - last_count
            point = Point(t, p[-1].busy_s + d_sum, p[-1].done + d_count)
        self._raw = (raw_sum, raw_count)
        p.append(point)
        while len(p) > 2 and p[1].t < t - self.horizon_s:
            p.popleft()

    def last(self) -> Point | None:
        return self.points[-1] if self.points else None

    def interval(self, window_s: float, now: float) -> Interval | None:
        """From the last scrape at or before ``now - window_s`` (the oldest one when none is that
        old) to the last scrape; None with fewer than two."""
        p = self.points
        if len(p) < 2:
            return None
        start = now - window_s
        a = p[0]
        for q in p:
            if q.t > start:
                break
            a = q
        return between(a, p[-1])


@dataclass(frozen=True)
class Reading:
    """A gauge's value over a window and where it came from."""

    value: float  # the gauge's unit (requests), time-averaged over the window
    source: str  # "rate(<histogram>_sum)" (Little's law) or "<gauge> samples"


def read(
    entry: BusyHistogram | None,
    gauge_name: str,
    samples: Gauge | None,
    points: BusyPoints | None,
    window_s: float,
    now: float,
) -> Reading | None:
    """The gauge over ``[now - window_s, now]``: Little's law from the histogram when its
    requests are short against the interval (the larger of it and the samples' mean), else the
    samples' time-weighted mean; None with neither."""
    sampled = samples.mean(window_s, now) if samples is not None else None
    iv = points.interval(window_s, now) if points is not None and entry is not None else None
    if entry is not None and iv is not None:
        short = iv.request_s is not None and iv.request_s <= MAX_REQUEST_FRACTION * iv.seconds
        if short or sampled is None:
            return Reading(max(iv.mean, sampled or 0.0), f"rate({entry.sum_name})")
    if sampled is None:
        return None
    return Reading(sampled, f"{gauge_name} samples")
