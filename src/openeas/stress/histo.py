"""Latency histograms: HDR histograms (the ``hdrhistogram`` package) in microseconds.

An HDR histogram records any value from 1 µs to an hour with 3 significant digits in a fixed
few kilobytes, so every request of a long step is kept (no sampling, no reservoir) and the
p99.9 of a million requests is exact to 0.1%. Values go in as seconds (floats, the loop clock's
unit) and come out as milliseconds, the unit every report shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: nothing a stress test waits for lasts longer
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _key(p: float) -> str:
    """50.0 → "p50", 99.9 → "p99.9"."""
    return "p" + (f"{p:g}")


class Histo:
    """Latencies of one kind (request latency, time to first token...) of one step, in µs."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record_s(self, seconds: float) -> None:
        """Record one latency given in seconds (clamped into 1 µs .. 1 h)."""
        us = int(seconds * 1e6)
        self._h.record_value(LOWEST_US if us < LOWEST_US else min(us, HIGHEST_US))

    def add(self, other: Histo) -> None:
        self._h.add(other._h)

    def copy(self) -> Histo:
        out = Histo()
        out._h.add(self._h)
        return out

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile_ms(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100) in ms; None when nothing was recorded."""
        if self.count == 0:
            return None
        return self._h.get_value_at_percentile(p) / 1000.0

    def mean_ms(self) -> float | None:
        return self._h.get_mean_value() / 1000.0 if self.count else None

    def max_ms(self) -> float | None:
        return self._h.get_max_value() / 1000.0 if self.count else None

    def summary(self) -> dict[str, Any]:
        """``{"count", "mean_ms", "p50", "p90", "p99", "p99.9", "max_ms"}`` (ms; None when empty)."""
        out: dict[str, Any] = {"count": self.count, "mean_ms": _round(self.mean_ms())}
        for p in PERCENTILES:
            out[_key(p)] = _round(self.percentile_ms(p))
        out["max_ms"] = _round(self.max_ms())
        return out

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (kept in the JSON report so a
        reader can merge steps or recompute any percentile)."""
        return self._h.encode().decode() if self.count else ""

    @classmethod
    def decode(cls, text: str) -> Histo:
        out = cls()
        if text:
            out._h.decode_and_add(text.encode())
        return out


def merged(histos: Iterable[Histo]) -> Histo:
    out = Histo()
    for h in histos:
        out.add(h)
    return out


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
