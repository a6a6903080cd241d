"""The autoscaler as the one automatic writer of desired replicas: an async service at zero with
a queued request is started by it (``ScaleFromZero``), with or without a policy; a real store
(SQLite in tmp_path), a hand-written backlog source and the one fake clock (tests call tick()
themselves and jump it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openeas.autoscaler.activation import ACTIVATION_EVERY_S, QueueActivation
from openeas.autoscaler.loop import Autoscaler
from openeas.kernel.clock import FakeClock
from openeas.kernel.states import ServiceState
from openeas.queue.model import Backlog
from openeas.spec import parse_spec
from openeas.store import Store


class FakeBacklogs:
    def __init__(self, backlogs: dict[str, Backlog]) -> None:
        self.values = backlogs
        self.asked: list[list[str]] = []

    def backlogs(self, services: list[str]) -> dict[str, Backlog]:
        self.asked.append(services)
        return {s: self.values[s] for s in services if s in self.values}


def deploy(store: Store, kind: str | None, policy: bool = False) -> None:
    meta: dict[str, Any] = {"name": "svc", "instance": 0}
    if kind:
        meta["type"] = kind
    spec: dict[str, Any] = {"metadata": meta, "containers": [{"command": "serve --port 8000", "port": 8000}]}
    if policy:
        spec["autoscaling"] = {"metric": "backlog", "target": 5, "min_replicas": 0, "max_replicas": 3}
    store.create_service(parse_spec(spec))


def scaler(store: Store, source: FakeBacklogs, clock: FakeClock, woken: list[int]) -> Autoscaler:
    return Autoscaler(
        store,
        clock=clock,
        activation=QueueActivation(store, source),
        wake_reconciler=lambda: woken.append(1),
    )


CASES = [
    # kind, policy, stopped, backlog, desired after one tick
    pytest.param("Async", False, False, Backlog(3, 0), 1, id="queued-wakes"),
    pytest.param("Async", False, False, Backlog(0, 1), 1, id="in-flight-on-a-leaving-replica-wakes"),
    pytest.param("Async", True, False, Backlog(1, 0), 1, id="with-a-policy-too"),
    pytest.param("Async", False, False, Backlog(0, 0), 0, id="empty-queue"),
    pytest.param("Async", False, False, None, 0, id="no-data-is-no-backlog"),
    pytest.param("Async", False, True, Backlog(9, 0), 0, id="stopped-never-started"),
    pytest.param(None, False, False, Backlog(9, 0), 0, id="not-async"),
]


@pytest.mark.parametrize(("kind", "policy", "stopped", "backlog", "desired"), CASES)
async def test_an_async_service_at_zero_is_woken_by_the_autoscaler(
    tmp_path: Path, kind: str | None, policy: bool, stopped: bool, backlog: Backlog | None, desired: int
) -> None:
    store = Store(tmp_path / "data")
    deploy(store, kind, policy)
    if stopped:
        store.update_service("svc", state=ServiceState.STOPPED)
    woken: list[int] = []
    a = scaler(store, FakeBacklogs({"svc": backlog} if backlog else {}), FakeClock(100.0), woken)
    await a.tick()
    assert store.get_service("svc").desired_replicas == desired
    events = [e for e in store.events("svc") if e.reason == "ScaleFromZero"]
    assert len(events) == desired and len(woken) == desired
    if desired:
        b = backlog
        assert b is not None
        assert f"{b.queued} queued and {b.in_flight} in-flight" in events[0].message


async def test_backlogs_are_read_at_most_every_half_second(tmp_path: Path) -> None:
    assert ACTIVATION_EVERY_S == 0.5  # the documented period (docs/async.md)
    store = Store(tmp_path / "data")
    deploy(store, "Async")
    source, clock = FakeBacklogs({}), FakeClock(100.0)
    a = scaler(store, source, clock, [])
    await a.tick()
    clock.jump(0.4)  # 0.4 s later: not yet
    await a.tick()
    assert len(source.asked) == 1
    clock.jump(0.1)
    source.values["svc"] = Backlog(2, 0)
    await a.tick()
    assert source.asked == [["svc"], ["svc"]]
    assert store.get_service("svc").desired_replicas == 1
    clock.jump(0.5)  # at one replica: nothing to read
    await a.tick()
    assert len(source.asked) == 2
