"""The fake of the generator's transport seam: a simulated service (its clock seam takes the one
fake, ``kernel.clock.FakeClock(drive=True)``: time moves only when the generator, the one
coroutine, sleeps, running the service's answers scheduled meanwhile in time order).

:class:`SimulatedService` is a transport that answers like a service of ``servers`` x
``service_s``: a known capacity of ``servers / service_s`` req/s per replica, a FIFO queue beyond
it. Together they run a whole
stress test (ramp, knee, saturation) in milliseconds and exactly the same way every time.
"""

from __future__ import annotations

from collections import deque

from openeas.kernel.clock import FakeClock
from openeas.stress.generator import OnDone, Outcome


class SimulatedService:
    """A transport that is also the service: ``replicas`` x ``servers`` requests served at once,
    each taking ``service_s`` (virtual) seconds; more wait in one FIFO queue.

    ``send_lag_s`` delays every send (a slow client): open-loop latency must still count from the
    due time. ``fail_every``: every N-th request is answered 500.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        servers: int = 8,
        service_s: float = 0.05,
        replicas: int = 1,
        send_lag_s: float = 0.0,
        fail_every: int = 0,
    ) -> None:
        self.clock = clock
        self.slots = servers * replicas
        self.service_s = service_s
        self.send_lag_s = send_lag_s
        self.fail_every = fail_every
        self.sent_total = 0
        self.busy = 0
        self.sent_times: list[float] = []  # when each request was sent (for tests)
        self._queue: deque[tuple[float, float, OnDone]] = deque()
        self._n = 0

    def send(self, body: int, intended: float, on_done: OnDone) -> None:
        sent = self.clock.now() + self.send_lag_s
        self.sent_total += 1
        self.sent_times.append(sent)
        if self.busy < self.slots:
            self._serve(intended, sent, sent, on_done)
        else:
            self._queue.append((intended, sent, on_done))

    def in_flight(self) -> int:
        return self.busy + len(self._queue)

    def _serve(self, intended: float, sent: float, start: float, on_done: OnDone) -> None:
        self.busy += 1
        self._n += 1
        status = 500 if self.fail_every and self._n % self.fail_every == 0 else 200

        def finish() -> None:
            self.busy -= 1
            now = self.clock.now()
            on_done(Outcome(intended, sent, now, status))
            if self._queue:
                i, s, cb = self._queue.popleft()
                self._serve(i, s, now, cb)

        self.clock.call_at(start + self.service_s, finish)
