"""Watching the service while it is loaded: ready replicas and requests in flight, over time.

The control plane knows both: replicas from its store, requests in flight (and held) from the
gateways' counters (``GET /api/v1/services/{name}/load``). An :class:`ApiObserver` polls that
in a thread of its own, so a slow answer never delays the generator's schedule; the report
charts the samples and each step gets their mean over its window. A value the control plane did
not have is ``None`` ("no data" is not zero).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

POLL_S = 0.5


@dataclass(frozen=True)
class Sample:
    t: float  # clock seconds (the generator's clock)
    ready: int | None  # Ready replicas of the service
    desired: int | None  # replicas the control plane wants
    in_flight: float | None  # requests in flight at the gateways (held ones included)

    def to_dict(self, t0: float) -> dict[str, Any]:
        d = asdict(self)
        d["t"] = round(self.t - t0, 3)
        return d


class Observer(Protocol):
    def samples(self) -> list[Sample]: ...


def window_mean(samples: Sequence[Sample], start: float, end: float, field: str) -> float | None:
    """The mean of ``field`` over the samples taken within [start, end]; the latest one before
    ``start`` stands in when none was (a slow poll); None when there is no data at all."""
    inside = [getattr(s, field) for s in samples if start <= s.t <= end and getattr(s, field) is not None]
    if not inside:
        before = [getattr(s, field) for s in samples if s.t < start and getattr(s, field) is not None]
        if not before:
            return None
        inside = before[-1:]
    return sum(inside) / len(inside)


class StaticObserver:
    """A fixed view (tests, and a run with no control plane to ask): ``ready`` replicas always."""

    def __init__(self, ready: int | None = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.ready = ready
        self.clock = clock

    def samples(self) -> list[Sample]:
        return [Sample(t=-1e18, ready=self.ready, desired=self.ready, in_flight=None)]


class ApiObserver:
    """Polls ``fetch()`` (a dict with ``ready_replicas``, ``desired_replicas``, ``in_flight``)
    every ``period_s`` in a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        fetch: Callable[[], dict[str, Any]],
        *,
        period_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.period_s = period_s
        self.clock = clock
        self.errors = 0
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openeas-stress-observer", daemon=True)

    def start(self) -> ApiObserver:
        self._poll()  # one sample before the first step
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._poll()

    def _poll(self) -> None:
        try:
            d = self.fetch()
        except Exception:  # the control plane being slow or away must not stop the test
            self.errors += 1
            return
        s = Sample(
            t=self.clock(),
            ready=_int(d.get("ready_replicas")),
            desired=_int(d.get("desired_replicas")),
            in_flight=_float(d.get("in_flight")),
        )
        with self._lock:
            self._samples.append(s)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
