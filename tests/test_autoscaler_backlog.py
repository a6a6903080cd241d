"""The autoscaler's ``backlog`` metric from an async service's queue (collection only): a fake
queue backend, the window's time-weighted mean, and no data when the queue cannot be read."""

from __future__ import annotations

import pytest

from openeas.autoscaler.backlog import QueueBacklog
from openeas.autoscaler.metrics import ServiceView
from openeas.queue.model import Backlog
from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget


class FakeQueue:
    """Answers the backlogs it is told; raises when `broken`."""

    def __init__(self) -> None:
        self.now: dict[str, Backlog] = {}
        self.broken = False

    def backlogs(self, services: list[str]) -> dict[str, Backlog]:
        if self.broken:
            raise OSError("queue database is locked")
        return {s: self.now.get(s, Backlog(0, 0)) for s in services}


METRIC = MetricTarget(kind="backlog", target=10.0)
VIEW = ServiceView("jobs", AutoscalingPolicy(source="autoscaling", metrics=(METRIC,), min_replicas=0, max_replicas=4), ())


async def test_backlog_is_queued_plus_in_flight_averaged_over_the_window():
    queue = FakeQueue()
    source = QueueBacklog(queue)
    assert source.total(VIEW, METRIC, 10.0, 0.0) is None  # nothing read yet: no data, not zero
    queue.now["jobs"] = Backlog(queued=30, in_flight=10)
    await source.collect([VIEW], now=0.0)
    queue.now["jobs"] = Backlog(queued=0, in_flight=0)
    await source.collect([VIEW], now=10.0)
    # 40 held from t=0 to t=10, then 0: the mean over [0, 10] is 40, over [5, 15] (40 for 5 s, 0
    # for 5 s) is 20.
    assert source.total(VIEW, METRIC, 10.0, 10.0) == pytest.approx(40.0)
    assert source.total(VIEW, METRIC, 10.0, 15.0) == pytest.approx(20.0)


async def test_an_unreadable_queue_is_no_data():
    queue = FakeQueue()
    queue.broken = True
    source = QueueBacklog(queue)
    await source.collect([VIEW], now=0.0)
    assert source.total(VIEW, METRIC, 10.0, 0.0) is None
