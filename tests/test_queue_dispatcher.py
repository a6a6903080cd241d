"""The dispatcher on a real SQLite queue with a hand-written fake replica transport: windows per
replica, failed attempts redelivered to another replica, dead letters after max_delivery, leases
given back on stop. On the one fake clock: the dispatcher's polls, lease renewals, cooldowns
and its stop's grace period pass in virtual time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from openeas.kernel.clock import FakeClock
from openeas.kernel.queue import QueueSettings
from openeas.kernel.routing import Upstream
from openeas.queue import Message, Result, State, open_backend
from openeas.queue.base import QueueBackend
from openeas.queue.dispatcher import Answer, CallFailed, Dispatcher
from tests.fakes import drive

A = Upstream("a", "127.0.0.1", 1)
B = Upstream("b", "127.0.0.1", 2)


class FakeCaller:
    """Replicas by id: 'ok' answers 200 with the body, 'fail' answers 500, 'gone' refuses;
    while ``gate`` is set, calls wait on it (to observe how many run at once)."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, str]] = []  # (replica id, request id)
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.gate: asyncio.Event | None = None

    async def call(self, target: Upstream, msg: Message, timeout_s: float, max_bytes: int) -> Answer:
        rid = target.replica_id
        self.calls.append((rid, msg.request_id))
        self.running[rid] = self.running.get(rid, 0) + 1
        self.peak[rid] = max(self.peak.get(rid, 0), self.running[rid])
        try:
            if self.gate is not None:
                await self.gate.wait()
            kind = self.behaviour[rid]
            if kind == "gone":
                raise CallFailed(f"replica {rid}: connection refused")
            if kind == "fail":
                return Answer(500, [], b"boom")
            return Answer(200, [("Content-Type", "text/plain")], b"done:" + msg.body)
        finally:
            self.running[rid] -= 1

    async def close(self) -> None:
        pass


@pytest.fixture
async def q(tmp_path: Path) -> AsyncIterator[QueueBackend]:
    backend = open_backend(None, tmp_path)
    yield backend
    await backend.close()


async def fill(q: QueueBackend, n: int) -> list[str]:
    ids = [f"r{i}" for i in range(n)]
    for rid in ids:
        await q.enqueue(Message("svc", rid, "POST", "/", [], rid.encode(), 0, time.time()))
    return ids


class Counted:
    """The queue as the dispatcher sees it, counting its calls under way (they run on the queue's
    own thread): the fake clock stands still while one is, as a real one would barely move."""

    def __init__(self, q: QueueBackend) -> None:
        self.q, self.under_way = q, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.q, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.under_way += 1
            try:
                return await attr(*args, **kwargs)
            finally:
                self.under_way -= 1

        return call


@pytest.fixture
def counted(q: QueueBackend) -> Counted:
    return Counted(q)


@pytest.fixture
def clock(counted: Counted) -> FakeClock:
    return FakeClock(busy=lambda: counted.under_way > 0)


async def test_each_replica_gets_at_most_its_window(q: QueueBackend, counted: Counted, clock: FakeClock) -> None:
    ids = await fill(q, 10)
    caller = FakeCaller({"a": "ok", "b": "ok"})
    caller.gate = asyncio.Event()
    stored: list[Result] = []
    d = Dispatcher(cast(QueueBackend, counted), "c1", caller=caller, on_result=stored.append, clock=clock)
    d.update({"svc": (QueueSettings(window=2), [A, B])})
    await clock.run_until(lambda: len(caller.calls) == 4)  # 2 replicas x window 2
    await clock.advance(5.0)  # polls and lease renewals: no fifth call while the windows are full
    assert len(caller.calls) == 4 and (await q.backlog("svc")).in_flight == 4
    caller.gate.set()
    await clock.run_until(lambda: len(stored) == 10)
    assert caller.peak == {"a": 2, "b": 2}
    assert sorted(r.request_id for r in stored) == ids
    assert all(r.body == b"done:" + r.request_id.encode() for r in stored)
    await drive(clock, d.stop(1))


async def test_a_refusing_replica_redelivers_to_another(q: QueueBackend, counted: Counted, clock: FakeClock) -> None:
    await fill(q, 6)
    caller = FakeCaller({"a": "gone", "b": "ok"})
    stored: list[Result] = []
    d = Dispatcher(cast(QueueBackend, counted), "c1", caller=caller, on_result=stored.append, clock=clock)
    d.update({"svc": (QueueSettings(window=1, max_delivery=5), [A, B])})
    await clock.run_until(lambda: len(stored) == 6)
    assert {r for r, _ in caller.calls} == {"a", "b"}
    assert all(r.attempts >= 1 for r in stored)
    stats = d.stats("svc")
    assert stats is not None and stats.completed == 6 and stats.failed_attempts >= 1 and stats.dead == 0
    await drive(clock, d.stop(1))


async def test_always_failing_requests_go_dead_after_max_delivery(q: QueueBackend, counted: Counted, clock: FakeClock) -> None:
    (rid,) = await fill(q, 1)
    caller = FakeCaller({"a": "fail"})
    d = Dispatcher(cast(QueueBackend, counted), "c1", caller=caller, cooldown_s=0.05, clock=clock)
    d.update({"svc": (QueueSettings(max_delivery=3), [A])})
    await clock.run_until(lambda: d.stats("svc") is not None and d.stats("svc").dead == 1)  # type: ignore[union-attr]
    dead_letters = await q.dead_letters("svc", 10)
    # Dead: it can be claimed no more, so the count of attempts is final.
    assert len(caller.calls) == 3  # max_delivery attempts, then no more
    (dead,) = dead_letters
    assert dead.request_id == rid and dead.attempts == 3 and "answered 500: boom" in dead.last_error
    caller.behaviour["a"] = "ok"  # the replica is fixed
    assert await q.redrive("svc", [rid]) == 1
    d.wake("svc")
    await clock.run_until(lambda: len(caller.calls) == 4)
    await clock.run_until(lambda: d.stats("svc").completed == 1)  # type: ignore[union-attr]
    assert (await q.lookup("svc", rid))[0] is State.DONE
    await drive(clock, d.stop(1))


async def test_stop_gives_unanswered_requests_back_uncounted(q: QueueBackend, counted: Counted, clock: FakeClock) -> None:
    await fill(q, 2)
    caller = FakeCaller({"a": "ok"})
    caller.gate = asyncio.Event()  # never set: the calls hang
    d = Dispatcher(cast(QueueBackend, counted), "c1", caller=caller, clock=clock)
    d.update({"svc": (QueueSettings(window=2), [A])})
    await clock.run_until(lambda: len(caller.calls) == 2)
    await drive(clock, d.stop(1))  # the grace period passes in virtual time
    b = await q.backlog("svc")
    assert (b.queued, b.in_flight) == (2, 0)
    again = await q.claim("svc", "c2", 2, 30, time.time())
    assert [m.attempts for m in again] == [1, 1]
