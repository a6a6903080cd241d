"""The simulator's async queue: what an async service's replicas leave waiting, second by second.

An async service (``metadata.type: Async``) queues every request; its Ready replicas take
``capacity_qps`` requests per second each. With ``Q`` the requests still queued after second ``s``,
``a`` those arriving in it and ``c`` what the Ready replicas take: ``Q[s] = max(0, Q[s-1] + a - c)``
(Lindley's recurrence). The autoscaler's ``backlog`` metric is queued + in flight (the requests
being served: the second's request-seconds). A request arriving in second ``s`` waits about
``Q[s-1] / c`` (first in, first out), or, with no Ready replica, until the first Ready second and
then the queue ahead of it. The simulator advances the queue up to each decision (the Ready count
is known for every second between two decisions); a stretch where the queue is empty and the
arrivals stay under the capacity is skipped at once.
"""

from __future__ import annotations

import numpy as np

from openeas.autoscaler.trace import Trace


class AsyncQueue:
    def __init__(self, trace: Trace, capacity_qps: float) -> None:
        n = trace.seconds
        self.arrivals = trace.arrivals
        self.busy = trace.busy
        self.capacity_qps = capacity_qps  # requests/s one Ready replica takes
        self.queued = np.zeros(n)  # after each second
        self.cap = np.zeros(n)  # requests/s the Ready replicas take in each second
        self.cum_backlog = np.zeros(n + 1)  # cumulative queued + in flight, 0 first
        self.t = 0  # seconds advanced

    def advance(self, to: int, ready_at: list[int]) -> None:
        """Step the queue over seconds ``[t, to)``; ``ready_at``: when each live replica is Ready."""
        lo, hi = self.t, min(to, len(self.queued))
        if hi <= lo:
            return
        ready = np.searchsorted(np.sort(np.array(ready_at, dtype=np.int64)), np.arange(lo, hi), side="right")
        cap = ready * self.capacity_qps
        self.cap[lo:hi] = cap
        a = self.arrivals[lo:hi]
        q = self.queued[lo - 1] if lo > 0 else 0.0
        if q == 0 and bool(np.all(a <= cap)):
            self.queued[lo:hi] = 0.0  # nothing waits: no second to step
        else:
            out = self.queued
            for i, (ai, ci) in enumerate(zip(a.tolist(), cap.tolist(), strict=True)):
                q = max(0.0, q + ai - ci)
                out[lo + i] = q
        backlog = self.queued[lo:hi] + self.busy[lo:hi]
        self.cum_backlog[lo + 1 : hi + 1] = self.cum_backlog[lo] + np.cumsum(backlog)
        self.t = hi

    def window(self, t: int, span_s: float) -> float:
        """Mean backlog (queued + in flight) over the ``span_s`` seconds before ``t``."""
        lo = max(0, t - max(1, int(span_s)))
        return float(self.cum_backlog[t] - self.cum_backlog[lo]) / max(1, t - lo)

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
