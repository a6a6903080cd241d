"""Prometheus histogram lines from a fixed bucket layout (the gateway writes its own exposition:
no client library on its hot path). Standard library only."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def histogram_lines(
    name: str, labels: str, bounds: Sequence[float], counts: Iterable[int], sum_s: float, count: int
) -> list[str]:
    """``name``'s ``_bucket`` (cumulative, ``+Inf`` last), ``_sum`` and ``_count`` lines.

    ``labels``: the series' labels, already escaped (``service="a"``); ``counts``: the
    non-cumulative count per bucket of ``bounds`` (upper bounds, the last one ``math.inf``).
    """
    out = []
    cumulative = 0
    for le, n in zip(bounds, counts, strict=True):
        cumulative += n
        le_s = "+Inf" if le == math.inf else repr(le)
        out.append(f'{name}_bucket{{{labels},le="{le_s}"}} {cumulative}')
    out.append(f"{name}_sum{{{labels}}} {sum_s}")
    out.append(f"{name}_count{{{labels}}} {count}")
    return out
