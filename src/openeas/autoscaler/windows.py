"""Time windows over sampled values: a gauge's time-weighted mean and a counter's rate.

Collectors add samples ``(t, value)`` as they read them; the autoscaler asks for a window ending
at ``now``. Times are seconds on the collector's clock (monotonic). A gauge holds its value until
the next sample (a gateway that only reports changes is read right); a counter that goes down was
restarted, and counts from zero again (never a negative rate).
"""

from __future__ import annotations

from collections import deque


class Gauge:
    """Samples of a gauge, kept for ``horizon_s``."""

    def __init__(self, horizon_s: float = 900.0) -> None:
        self.horizon_s = horizon_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        s = self.samples
        if s and t < s[-1][0]:
            return  # out of order: ignored
        s.append((t, value))
        # Keep one sample older than the horizon: it is the value at the window's start.
        while len(s) > 2 and s[1][0] < t - self.horizon_s:
            s.popleft()

    def last(self) -> tuple[float, float] | None:
        return self.samples[-1] if self.samples else None

    def mean(self, window_s: float, now: float) -> float | None:
        """Time-weighted mean over ``[now - window_s, now]``; over the part covered when samples
        start later; the last value itself for a zero window; None without a sample."""
        s = self.samples
        if not s or s[0][0] > now:
            return None
        start = now - window_s
        if window_s <= 0 or s[-1][0] <= start:
            return s[-1][1] if s[-1][0] <= now else None
        area, covered = 0.0, 0.0
        for i, (t, v) in enumerate(s):
            if t > now:
                break
            t_end = s[i + 1][0] if i + 1 < len(s) else now
            t_end = min(t_end, now)
            lo = max(t, start)
            if t_end > lo:
                area += v * (t_end - lo)
                covered += t_end - lo
        if covered <= 0:
            return s[-1][1]
        return area / covered


class Counter:
    """Samples of a cumulative counter, kept for ``horizon_s``; a drop means a restart."""

    def __init__(self, horizon_s: float = 900.0) -> None:
        self.horizon_s = horizon_s
        self.samples: deque[tuple[float, float]] = deque()  # (t, total counted since we began)
        self._raw_last: float | None = None

    def add(self, t: float, raw: float) -> None:
        s = self.samples
        if s and t < s[-1][0]:
            return
        if self._raw_last is None:
            total = 0.0
        else:
            delta = raw - self._raw_last
            total = s[-1][1] + (delta if delta >= 0 else raw)  # restarted: it counted `raw` since
        self._raw_last = raw
        s.append((t, total))
        while len(s) > 2 and s[1][0] < t - self.horizon_s:
            s.popleft()

    def rate(self, window_s: float, now: float) -> float | None:
        """Increase per second over the window (over the part covered when samples start later);
        None with fewer than two samples."""
        s = self.samples
        if len(s) < 2:
            return None
        start = now - window_s
        first = s[0]
        for t, v in s:
            if t <= start:
                first = (t, v)
            else:
                break
        last = s[-1]
        span = now - max(first[0], start)  # now, not the last sample: a counter that stopped decays
        if span <= 0:
            return None
        return max(0.0, (last[1] - first[1]) / span)
