"""Request traces for the simulator: the CSV format (docs/simulate.md), its reader with errors that
name the line and column, its writer, and the field guide's shapes.

A trace is requests per second (and the request-seconds they bring) from an epoch second; the
simulator replays it through the autoscaler's ``decide()`` (:mod:`openeas.autoscaler.simulate`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from openeas.errors import SpecError

COLUMNS = ("timestamp", "count", "duration_s", "tokens")  # count is optional (1 per row)
REQUIRED = ("timestamp",)  # and one of duration_s or tokens
MAX_SPAN_S = 400 * 86_400  # seconds a trace may span: a month and more, never an unbounded array
MAX_ERRORS = 10  # errors listed before the reader stops


@dataclass(frozen=True)
class Trace:
    """Requests per second from ``start`` (epoch seconds, for cron rules)."""

    start: float
    arrivals: np.ndarray  # requests starting in each second (float64)
    busy: np.ndarray  # request-seconds starting in each second: sum of their durations

    @property
    def seconds(self) -> int:
        return len(self.arrivals)

    @property
    def requests(self) -> float:
        return float(self.arrivals.sum())


def _header(row: list[str], where: str, tokens_per_s: float | None) -> dict[str, int]:
    names = [c.strip() for c in row]
    unknown = [n for n in names if n not in COLUMNS]
    missing = [n for n in REQUIRED if n not in names]
    size = [n for n in ("duration_s", "tokens") if n in names]
    dup = sorted({n for n in names if names.count(n) > 1})
    errors = [f"{where} line 1, column {names.index(u) + 1}: unknown column {u!r}" for u in unknown]
    errors += [f"{where} line 1: no {m!r} column" for m in missing]
    errors += [f"{where} line 1: column {d!r} given twice" for d in dup]
    if len(size) != 1:
        errors.append(
            f"{where} line 1: one of 'duration_s' or 'tokens' (each request's size), not {len(size)}"
        )
    elif size == ["tokens"] and tokens_per_s is None:
        errors.append(
            f"{where}: a 'tokens' column needs the replicas' tokens/s to become durations (--tokens-per-s)"
        )
    if errors:
        raise SpecError(
            [
                *errors,
                f"{where}: the header is timestamp,count,duration_s (count optional; tokens for duration_s)",
            ]
        )
    return {n: i for i, n in enumerate(names)}


def _number(text: str, where: str, line: int, cols: dict[str, int], name: str, *, ge0: bool) -> float:
    col = cols[name] + 1
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{where} line {line}, column {col} ({name}): {text!r} is not a number") from None
    if not math.isfinite(v) or (ge0 and v < 0):
        raise ValueError(f"{where} line {line}, column {col} ({name}): {text!r}; must be a finite number ≥ 0")
    return v


def read_trace(lines: Iterable[str], where: str = "trace", tokens_per_s: float | None = None) -> Trace:
    """A trace from CSV text (see the module doc); SpecError naming the line and column of each
    bad value (the first :data:`MAX_ERRORS`). A ``tokens`` column instead of ``duration_s``: each
    request takes ``tokens / tokens_per_s`` seconds (one replica's generation speed)."""
    reader = csv.reader(lines)
    try:
        head = next(reader)
    except StopIteration:
        raise SpecError([f"{where}: empty (the header is timestamp,count,duration_s)"]) from None
    cols = _header(head, where, tokens_per_s)
    times: list[float] = []
    counts: list[float] = []
    durations: list[float] = []
    errors: list[str] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(cols):
            errors.append(f"{where} line {line}: {len(row)} fields, the header has {len(cols)}")
        else:
            try:
                t = _number(row[cols["timestamp"]], where, line, cols, "timestamp", ge0=True)
                c = (
                    _number(row[cols["count"]], where, line, cols, "count", ge0=True)
                    if "count" in cols
                    else 1.0
                )
                if "tokens" in cols:
                    d = _number(row[cols["tokens"]], where, line, cols, "tokens", ge0=True) / (
                        tokens_per_s or 1.0
                    )
                else:
                    d = _number(row[cols["duration_s"]], where, line, cols, "duration_s", ge0=True)
            except ValueError as exc:
                errors.append(str(exc))
            else:
                times.append(t)
                counts.append(c)
                durations.append(d)
        if len(errors) >= MAX_ERRORS:
            errors.append(f"{where}: stopped after {MAX_ERRORS} errors")
            break
    if errors:
        raise SpecError(errors)
    if not times:
        raise SpecError([f"{where}: no request rows after the header"])
    start = math.floor(min(times))
    span = math.floor(max(times)) - start + 1
    if span > MAX_SPAN_S:
        raise SpecError(
            [f"{where}: spans {span} s from {start} to {max(times):.0f}; at most {MAX_SPAN_S} s (400 days)"]
        )
    at = (np.array(times) - start).astype(np.int64)
    c_arr = np.array(counts)
    return Trace(
        float(start),
        np.bincount(at, c_arr, minlength=span),
        np.bincount(at, c_arr * np.array(durations), minlength=span),
    )


def load_trace(path: str, tokens_per_s: float | None = None) -> Trace:
    """The trace CSV at ``path`` (:func:`read_trace`); an unreadable file is named."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return read_trace(f, path, tokens_per_s)
    except OSError as exc:
        raise SpecError([f"trace {path}: cannot read it ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise SpecError([f"trace {path}: not UTF-8 text"]) from None


def write_trace(trace: Trace, out: Any) -> None:
    """The trace as CSV (the seconds with requests only)."""
    out.write("timestamp,count,duration_s\n")
    a, b = trace.arrivals, trace.busy
    idx = np.flatnonzero(a)
    out.writelines(
        f"{trace.start + i:.0f},{c:g},{d:.6g}\n"
        for i, c, d in zip(idx.tolist(), a[idx].tolist(), (b[idx] / a[idx]).tolist(), strict=True)
    )


SHAPES = ("business-hours", "3pm-peak", "saturday-night")
MONDAY = 1_700_438_400.0  # Monday 2023-11-20 00:00 UTC: where generated traces start


def shape_rates(shape: str, days: int, peak_qps: float, base_qps: float) -> np.ndarray:
    """Requests/s for each second of ``days`` days from a Monday 00:00 UTC: the field guide's shapes.

    business-hours: ``peak_qps`` 09:00-18:00 on weekdays, ``base_qps`` otherwise; 3pm-peak: a
    daily bell around 15:00 (2 h wide) from ``base_qps`` up to ``peak_qps``; saturday-night:
    ``base_qps``, and ``peak_qps`` on Saturdays 20:00-02:00."""
    if shape not in SHAPES:
        raise SpecError([f"shape: {shape!r} is not one of {', '.join(SHAPES)}"])
    t = np.arange(days * 86_400)
    hour = (t % 86_400) / 3600
    weekday = (t // 86_400) % 7  # 0 = Monday
    if shape == "business-hours":
        on = (weekday < 5) & (hour >= 9) & (hour < 18)
        return np.where(on, peak_qps, base_qps)
    if shape == "3pm-peak":
        return base_qps + (peak_qps - base_qps) * np.exp(-(((hour - 15) / 2) ** 2))
    night = ((weekday == 5) & (hour >= 20)) | ((weekday == 6) & (hour < 2))
    return np.where(night, peak_qps, base_qps)


def generate(rates: np.ndarray, duration_s: float, seed: int = 0) -> Trace:
    """A trace with Poisson arrivals at ``rates`` (one a second), each request ``duration_s``."""
    a = np.random.default_rng(seed).poisson(rates).astype(float)
    return Trace(MONDAY, a, a * duration_s)
