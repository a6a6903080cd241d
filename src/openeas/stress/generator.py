"""The load generator: open-loop steps at an offered rate, and closed-loop steps at a concurrency.

Open loop means the schedule does not wait for answers: request k of a step is *due* at
``start + offset_k`` (offsets evenly spaced, or exponential gaps for Poisson arrivals) and is
sent then whether or not earlier ones came back. Its latency is measured from that due time, not
from when it actually left, so a generator that fell behind (or a full connection pool) shows up
as latency instead of silently lowering the load: no coordinated omission.

The generator only schedules and records. Sockets are the :class:`Transport`'s (``client.py``;
tests pass a fake one), time is the one :class:`~openeas.kernel.clock.Clock`'s
(``LOOP_CLOCK``: ``time.monotonic``, ns resolution; tests pass a fake one).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from openeas.kernel.clock import Clock
from openeas.stress.histo import Histo
from openeas.stress.members import MemberTally, tally
from openeas.stress.plan import Arrival

# While behind schedule the generator sends without sleeping; it still yields to the loop after
# this many sends in a row so that answers are read (and sockets written) meanwhile.
BURST_BEFORE_YIELD = 64
STOP_POLL_S = 0.05  # how often a waiting step looks at the stop flag


@dataclass(slots=True)
class Outcome:
    """One request's fate. Times are clock seconds (``Clock.now``)."""

    intended: float  # when it was due (open loop) or sent (closed loop): latency counts from here
    sent: float  # when its bytes went to the socket (>= intended)
    done: float  # when the answer ended, or the request failed
    status: int  # HTTP status; 0 when there was no answer (see ``error``)
    error: str | None = None  # "connect", "reset", "timeout", "protocol"; None when answered
    first_token: float | None = None  # streamed answers: the first SSE event with content
    last_token: float | None = None
    tokens: int = 0  # streamed answers: output tokens (SSE content events, or the usage chunk)
    member: str | None = None  # a group's test: the member that answered (X-OpenEAS-Member)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.error is None


OnDone = Callable[[Outcome], None]


class Transport(Protocol):
    """Sends requests; the only thing that touches sockets."""

    sent_total: int
    """Requests written to a socket so far (cumulative): the generator reads the achieved send rate
    from it."""

    def send(self, body: int, intended: float, on_done: OnDone) -> None:
        """Send body number ``body`` now (or as soon as a connection is free) and call ``on_done``
        exactly once with its outcome. Never blocks, never raises."""
        ...

    def in_flight(self) -> int: ...


def arrival_offsets(arrival: Arrival, rate: float, rng: random.Random) -> Iterator[float]:
    """Due times of a step's requests, in seconds from its start (endless; the caller stops)."""
    if arrival == Arrival.CONSTANT:
        gap = 1.0 / rate
        k = 0
        while True:
            yield k * gap  # k * gap, not a running sum: no drift over a long step
            k += 1
    else:
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            yield t


@dataclass
class Totals:
    """Counters over the whole run, read at step boundaries for per-window rates."""

    ok_done: int = 0  # successful answers completed
    tokens_done: int = 0  # streamed output tokens completed


@dataclass
class StepRecord:
    """What one step's requests did (each request belongs to the step that sent it)."""

    totals: Totals
    latency: Histo = field(default_factory=Histo)  # successful requests, from their due time
    ttft: Histo = field(default_factory=Histo)
    tpot: Histo = field(default_factory=Histo)
    sent: int = 0  # requests the step scheduled
    done: int = 0
    ok: int = 0
    tokens: int = 0
    by_status: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", "connect"...
    pending: dict[float, int] = field(default_factory=dict)  # due time → requests not answered yet
    members: dict[str, MemberTally] | None = None  # a group's test: answers by member; else None

    def on_send(self, intended: float) -> None:
        self.sent += 1
        p = self.pending
        p[intended] = p.get(intended, 0) + 1

    def record(self, o: Outcome) -> None:
        self.done += 1
        p = self.pending
        n = p.get(o.intended, 0)
        if n <= 1:
            p.pop(o.intended, None)
        else:
            p[o.intended] = n - 1
        key = o.error if o.error is not None else str(o.status)
        self.by_status[key] += 1
        if self.members is not None and o.member is not None:
            tally(self.members, o.member, key, o.ok, o.done - o.intended)
        if not o.ok:
            return
        self.ok += 1
        self.totals.ok_done += 1
        self.latency.record_s(o.done - o.intended)
        if o.first_token is not None:
            self.ttft.record_s(o.first_token - o.intended)
            self.tokens += o.tokens
            self.totals.tokens_done += o.tokens
            if o.tokens > 1 and o.last_token is not None:
                self.tpot.record_s((o.last_token - o.first_token) / (o.tokens - 1))

    def latency_with_pending(self, now: float) -> Histo:
        """The latencies so far plus, for each request still unanswered, its age: a lower bound of
        its latency. A step whose answers have not come back yet is not a fast step."""
        h = self.latency.copy()
        for intended, n in self.pending.items():
            for _ in range(n):
                h.record_s(now - intended)
        return h


@dataclass
class StepWindow:
    """One step as the generator ran it: its window and the counters read at its edges."""

    offered: float  # req/s (rate load) or requests in flight (concurrency load)
    start: float
    end: float
    sent: int  # requests written to sockets within the window (whatever step they belong to)
    ok_done: int  # successful answers completed within the window
    tokens_done: int
    record: StepRecord

    @property
    def duration_s(self) -> float:
        return max(self.end - self.start, 1e-9)


class Generator:
    """Runs steps against a transport. ``budget`` caps the requests of the whole run."""

    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        n_bodies: int,
        *,
        seed: int = 0,
        budget: int = 1_000_000,
        by_member: bool = False,
    ) -> None:
        self.transport = transport
        self.clock = clock
        self.n_bodies = max(1, n_bodies)
        self.rng = random.Random(seed)
        self.budget = budget
        self.capped = False  # the budget ran out
        self.stopped = False  # ``stop()`` was called (Ctrl-C, an API cancel)
        self.totals = Totals()
        self.by_member = by_member  # a group's test: each step tallies its answers by member
        self._next = 0

    def stop(self) -> None:
        self.stopped = True

    def _record(self) -> StepRecord:
        return StepRecord(self.totals, members={} if self.by_member else None)

    def _body(self) -> int:
        i = self._next
        self._next = i + 1 if i + 1 < self.n_bodies else 0
        return i

    def _take(self) -> bool:
        if self.budget <= 0:
            self.capped = True
            return False
        self.budget -= 1
        return True

    async def _wait_until(self, t: float) -> None:
        clock = self.clock
        while not self.stopped:
            left = t - clock.now()
            if left <= 0:
                return
            await clock.sleep(min(left, STOP_POLL_S))

    async def rate_step(self, rate: float, duration_s: float, arrival: Arrival) -> StepWindow:
        """Offer ``rate`` req/s for ``duration_s`` (open loop)."""
        clock, tr = self.clock, self.transport
        rec = self._record()
        start = clock.now()
        end = start + duration_s
        sent0, ok0, tok0 = tr.sent_total, self.totals.ok_done, self.totals.tokens_done
        burst = 0
        for offset in arrival_offsets(arrival, rate, self.rng):
            if offset >= duration_s or self.stopped or not self._take():
                break
            due = start + offset
            now = clock.now()
            if due > now:
                await clock.sleep(due - now)
                burst = 0
                if self.stopped:
                    self.budget += 1
                    break
            else:
                burst += 1
                if burst >= BURST_BEFORE_YIELD:
                    burst = 0
                    await asyncio.sleep(0)
            rec.on_send(due)
            tr.send(self._body(), due, rec.record)
        await self._wait_until(end)
        return self._window(rate, start, sent0, ok0, tok0, rec)

    async def concurrency_step(self, concurrency: int, duration_s: float) -> StepWindow:
        """Keep ``concurrency`` requests in flight for ``duration_s`` (closed loop: each answer
        sends the next; latency counts from the actual send)."""
        clock, tr = self.clock, self.transport
        rec = self._record()
        start = clock.now()
        end = start + duration_s
        sent0, ok0, tok0 = tr.sent_total, self.totals.ok_done, self.totals.tokens_done

        def again(o: Outcome) -> None:
            rec.record(o)
            now = clock.now()
            if now < end and not self.stopped and self._take():
                rec.on_send(now)
                tr.send(self._body(), now, again)

        for _ in range(concurrency):
            if not self._take():
                break
            now = clock.now()
            rec.on_send(now)
            tr.send(self._body(), now, again)
        await self._wait_until(end)
        return self._window(float(concurrency), start, sent0, ok0, tok0, rec)

    def _window(
        self, offered: float, start: float, sent0: int, ok0: int, tok0: int, rec: StepRecord
    ) -> StepWindow:
        return StepWindow(
            offered=offered,
            start=start,
            end=self.clock.now(),
            sent=self.transport.sent_total - sent0,
            ok_done=self.totals.ok_done - ok0,
            tokens_done=self.totals.tokens_done - tok0,
            record=rec,
        )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (at most ``timeout_s``); True when drained."""
        deadline = self.clock.now() + timeout_s
        while self.transport.in_flight() > 0:
            if self.clock.now() >= deadline:
                return False
            await self.clock.sleep(STOP_POLL_S)
        return True
