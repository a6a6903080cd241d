"""The simulator's async queue: what an async service's replicas leave waiting, second by second.

An async service (``metadata.type: Async``) queues every request; its Ready replicas take
``capacity_qps`` requests per second each. With ``Q`` the requests still queued after second ``s``,
``a`` those arriving in it and ``c`` what the Ready replicas take: ``Q[s] = max(0, Q[s-1] + a - c)``
(Lindley's recurrence). The autoscaler's ``backlog`` metric is queued + in flight (the requests
being served: the second's request-seconds). A request arriving in second ``s`` waits about
``Q[s-1] / c`` (first in, first out), or, with no Ready replica, until the first Ready second and
then the queue ahead of it. The simulator advances the queue up to each decision (the Ready count
is known for every second between two decisions), a stretch at once: the recurrence has a closed
form over cumulative sums (``Q[k] = S[k] - min(-Q0, S[1..k])``), so no second is stepped in Python.
"""

from __future__ import annotations

import numpy as np

from openeas.autoscaler.trace import Trace


class AsyncQueue:
    def __init__(self, trace: Trace, capacity_qps: float, step: int) -> None:
        n = trace.seconds
        self.arrivals = trace.arrivals
        self.capacity_qps = capacity_qps  # requests/s one Ready replica takes
        self.step = step  # seconds between two decisions: advance() goes a stretch at a time
        self.peak = np.maximum.reduceat(trace.arrivals, np.arange(0, n, step)) if n else np.zeros(0)
        self.queued = np.zeros(n)  # after each second
        self.cap = np.zeros(n)  # requests/s the Ready replicas take in each second
        self.cum_busy = np.concatenate(([0.0], np.cumsum(trace.busy)))  # in flight, cumulative
        self.cum_queued = np.zeros(n + 1)  # cumulative queued, 0 first; valid up to `filled`
        self.filled = 0  # after it, nothing was queued: cum_queued stays at cum_queued[filled]
        self.t = 0  # seconds advanced

    def advance(self, to: int, ready_at: list[int]) -> None:
        """Step the queue over seconds ``[t, to)`` (one decision's stretch: ``t`` a multiple of
        ``step``); ``ready_at``: when each live replica is Ready."""
        lo, hi = self.t, min(to, len(self.queued))
        if hi <= lo:
            return
        self.t = hi
        if all(r <= lo for r in ready_at):  # the usual case: every replica Ready the whole stretch
            cap: np.ndarray | float = len(ready_at) * self.capacity_qps
            under = self.peak[lo // self.step] <= cap
        else:
            ready = np.searchsorted(np.sort(np.array(ready_at)), np.arange(lo, hi), side="right")
            cap = ready * self.capacity_qps
            under = bool(np.all(self.arrivals[lo:hi] <= cap))
        self.cap[lo:hi] = cap
        q0 = float(self.queued[lo - 1]) if lo > 0 else 0.0
        if q0 == 0 and under:
            return  # nothing waits: queued stays 0, and so its cumulative sum after `filled`
        # Lindley's recurrence in closed form: Q[k] = S[k] - min(-q0, S[1..k]), S the cumulative
        # arrivals less capacity (no second-by-second loop).
        s = np.cumsum(self.arrivals[lo:hi] - cap)
        q = s - np.minimum(-q0, np.minimum.accumulate(s))
        self.queued[lo:hi] = q
        base = self.cum_queued[self.filled]
        self.cum_queued[self.filled + 1 : lo + 1] = base  # the stretches skipped since: nothing queued
        self.cum_queued[lo + 1 : hi + 1] = base + np.cumsum(q)
        self.filled = hi

    def _cq(self, i: int) -> float:
        return float(self.cum_queued[min(i, self.filled)])

    def window(self, t: int, span_s: float) -> float:
        """Mean backlog (queued + in flight) over the ``span_s`` seconds before ``t``."""
        lo = max(0, t - max(1, int(span_s)))
        total = self.cum_busy[t] - self.cum_busy[lo] + self._cq(t) - self._cq(lo)
        return float(total) / max(1, t - lo)

    def backlog_now(self, t: int) -> float:
        return float(self.queued[t - 1]) if t > 0 else 0.0

    def waits(self) -> np.ndarray:
        """Seconds a request arriving in each second waits in the queue (see the module doc)."""
        n = len(self.queued)
        ahead = np.concatenate(([0.0], self.queued[:-1]))
        idx = np.arange(n)
        nxt = np.where(self.cap > 0, idx, n)
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]  # the first second with a Ready replica
        at = np.minimum(nxt, n - 1)
        cap_at = self.cap[at]
        drain = np.divide(ahead[at], cap_at, out=np.zeros(n), where=cap_at > 0)
        never = nxt >= n  # no replica Ready until the trace ends: waits to the end
        return np.where(never, n - idx, (nxt - idx) + drain)
