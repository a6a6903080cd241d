"""The queue backend behaviour suite: every backend (SQLite; Redis Streams against a real
redis-server) keeps the same promises: durable enqueue, priority then arrival order, leases that
expire and are redelivered, exactly one stored result per request id, attempts limited into a
dead-letter list that can be re-driven, results that expire."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openeas.queue import Message, QueueBackend, Result, State, open_backend
from tests.queue_fixtures import BACKENDS, backend_url, redis_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.parametrize("kind", BACKENDS)


@pytest.fixture
async def q(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[QueueBackend]:
    backend = open_backend(backend_url(kind, tmp_path, request), tmp_path)
    yield backend
    await backend.close()


def msg(service: str = "svc", rid: str = "r", priority: int = 0, body: bytes = b"{}") -> Message:
    return Message(service, rid, "POST", "/", [("Content-Type", "application/json")], body, priority, time.time())


def result_of(m: Message, status: int = 200, ttl_s: float = 60.0) -> Result:
    return Result(m.service, m.request_id, m.index, status, [], b"ok:" + m.body, m.attempts, m.enqueued_at,
                  time.time(), ttl_s=ttl_s)


async def test_enqueue_gives_increasing_indexes_and_states(q: QueueBackend) -> None:
    a, b = msg(rid="a"), msg(rid="b")
    ia, ib = await q.enqueue(a), await q.enqueue(b)
    assert 0 < ia < ib and a.index == ia
    assert (await q.lookup("svc", "a"))[0] is State.QUEUED
    assert await q.lookup("svc", "nope") == (None, None)
    assert await q.lookup("other", "a") == (None, None)  # ids are per service
    assert (await q.backlog("svc")).queued == 2


async def test_claim_takes_priority_first_then_arrival_order(q: QueueBackend) -> None:
    for rid, prio in [("n1", 0), ("n2", 0), ("p1", 1), ("n3", 0), ("p2", 1)]:
        await q.enqueue(msg(rid=rid, priority=prio))
    first = await q.claim("svc", "c1", 3, 30, time.time())
    assert [m.request_id for m in first] == ["p1", "p2", "n1"]
    assert all(m.attempts == 1 for m in first)
    rest = await q.claim("svc", "c1", 10, 30, time.time())
    assert [m.request_id for m in rest] == ["n2", "n3"]
    assert await q.claim("svc", "c1", 10, 30, time.time()) == []
    b = await q.backlog("svc")
    assert (b.queued, b.in_flight) == (0, 5)


async def test_a_result_is_stored_once_whatever_was_redelivered(q: QueueBackend) -> None:
    await q.enqueue(msg(rid="x", body=b"1"))
    t = time.time()  # leases are judged by the `now` passed in: no waiting for one to run out
    (first,) = await q.claim("svc", "c1", 1, 0.05, t)
    assert await q.reclaim("svc", 5, t + 0.1) == 1  # c1's lease expired: back in the queue
    (second,) = await q.claim("svc", "c2", 1, 30, t + 0.1)
    assert second.request_id == "x" and second.attempts == 2
    assert await q.complete(first, result_of(first)) is True  # the slow first copy answered after all
    assert await q.complete(second, result_of(second)) is False  # the second answer is not stored
    state, res = await q.lookup("svc", "x")
    assert state is State.DONE and res is not None and res.body == b"ok:1" and res.attempts == 1
    assert [r.request_id for r in await q.results_after("svc", 0, 10)] == ["x"]
    assert (await q.backlog("svc")).total == 0


async def test_failed_attempts_end_in_the_dead_letter_list_and_redrive(q: QueueBackend) -> None:
    await q.enqueue(msg(rid="bad"))
    for attempt in (1, 2, 3):
        (m,) = await q.claim("svc", "c1", 1, 30, time.time())
        assert m.attempts == attempt
        state = await q.fail(m, f"HTTP 500 #{attempt}", max_delivery=3, now=time.time())
        assert state is (State.DEAD if attempt == 3 else State.QUEUED)
    assert await q.claim("svc", "c1", 1, 30, time.time()) == []
    (dead,) = await q.dead_letters("svc", 10)
    assert (dead.request_id, dead.attempts, dead.last_error) == ("bad", 3, "HTTP 500 #3")
    assert (await q.lookup("svc", "bad"))[0] is State.DEAD
    assert (await q.attributes("svc", 100, time.time())).dead == 1
    assert await q.redrive("svc", None) == 1
    (again,) = await q.claim("svc", "c1", 1, 30, time.time())
    assert again.attempts == 1  # a re-driven request gets max_delivery fresh attempts
    assert await q.complete(again, result_of(again))
    assert await q.dead_letters("svc", 10) == []


async def test_expired_leases_past_max_delivery_die(q: QueueBackend) -> None:
    await q.enqueue(msg(rid="hang"))
    t = time.time()
    for _ in range(2):
        await q.claim("svc", "c1", 1, 0.01, t)
        t += 0.05  # past the lease
        await q.reclaim("svc", 2, t)
    (dead,) = await q.dead_letters("svc", 10)
    assert dead.attempts == 2 and "lease expired" in dead.last_error


async def test_a_late_failure_of_a_taken_back_lease_changes_nothing(q: QueueBackend) -> None:
    await q.enqueue(msg(rid="x"))
    t = time.time()
    (old,) = await q.claim("svc", "c1", 1, 0.01, t)
    await q.reclaim("svc", 5, t + 0.05)  # past the lease
    (new,) = await q.claim("svc", "c2", 1, 30, t + 0.05)
    assert await q.fail(old, "late", 1, t + 0.05) is State.IN_FLIGHT  # the new delivery decides
    assert await q.dead_letters("svc", 10) == []
    assert await q.complete(new, result_of(new))


async def test_renewed_leases_do_not_expire_and_release_does_not_count(q: QueueBackend) -> None:
    await q.enqueue(msg(rid="long"))
    t = time.time()
    (m,) = await q.claim("svc", "c1", 1, 0.2, t)
    for _ in range(3):  # 0.3 s in all: past the first lease, never past a renewed one
        t += 0.1
        await q.renew("c1", [m], 0.2, t)
        assert await q.reclaim("svc", 5, t) == 0
    await q.release([m])
    (back,) = await q.claim("svc", "c2", 1, 30, time.time())
    assert back.attempts == 1  # the released delivery was not counted


async def test_read_results_are_deleted_and_old_ones_expire(q: QueueBackend) -> None:
    for rid in ("keep", "read", "old"):
        await q.enqueue(msg(rid=rid))
    for m in await q.claim("svc", "c1", 3, 30, time.time()):
        await q.complete(m, result_of(m, ttl_s=0.05 if m.request_id == "old" else 60))
    assert await q.mark_read("svc", ["read"]) == 1
    assert await q.lookup("svc", "read") == (State.READ, None)
    await asyncio.sleep(0.1)  # real time: Redis expires results by itself (PEXPIRE)
    assert await q.expire(time.time()) >= 1
    assert await q.lookup("svc", "old") == (None, None)
    assert [r.request_id for r in await q.results_after("svc", 0, 10)] == ["keep"]
    state, res = await q.lookup_index("svc", (await q.lookup("svc", "keep"))[1].index)  # type: ignore[union-attr]
    assert state is State.DONE and res is not None and res.request_id == "keep"


async def test_attributes_count_what_the_queue_holds(q: QueueBackend) -> None:
    for i in range(4):
        await q.enqueue(msg(rid=f"m{i}"))
    await q.claim("svc", "c1", 1, 30, time.time())
    a = await q.attributes("svc", 100, time.time() + 2)
    assert (a.queued, a.in_flight, a.dead, a.max_length) == (3, 1, 0, 100)
    assert a.oldest_age_s is not None and a.oldest_age_s >= 2
    assert a.last_index >= 4


def sink_put(body: bytes, rid: str, service: str = "svc") -> Result:
    now = time.time()
    return Result(service, rid, 0, 200, [("content-type", "text/plain")], body, 0, now, now)


async def test_the_sink_is_a_queue_of_its_own(q: QueueBackend) -> None:
    """Results put straight into the sink and results of requests share one sink order; get by
    sink index, truncate below an index, and the counts EAS's attributes read."""
    await q.enqueue(msg(rid="req"))
    (m,) = await q.claim("svc", "c1", 1, 30, time.time())
    await q.complete(m, result_of(m))
    first = (await q.lookup("svc", "req"))[1]
    assert first is not None
    puts = [await q.put_result(sink_put(b"p%d" % i, f"put{i}")) for i in range(3)]
    assert puts == sorted(puts) and puts[0] > first.sink_index
    assert await q.put_result(sink_put(b"again", "put0")) == 0  # a request id has one result
    state, got = await q.lookup_sink("svc", puts[1])
    assert state is State.DONE and got is not None and (got.request_id, got.body, got.index) == ("put1", b"p1", 0)
    assert await q.lookup_sink("svc", puts[2] + 1000) == (None, None)
    assert await q.sink_stats("svc") == (4, puts[2])
    # truncate(puts[2]) deletes every unread result below it: the request's and two puts
    assert await q.truncate_results("svc", puts[2]) == 3
    assert [r.request_id for r in await q.results_after("svc", 0, 10)] == ["put2"]
    assert await q.lookup_sink("svc", puts[0]) == (State.READ, None)
    assert await q.sink_stats("svc") == (1, puts[2])
    assert (await q.attributes("svc", 10, time.time())).results == 1
    await q.mark_read("svc", ["put2"])
    assert await q.sink_stats("svc") == (0, puts[2])


async def test_the_input_queue_read_deleted_and_truncated_by_index(q: QueueBackend) -> None:
    indexes = [await q.enqueue(msg(rid=f"m{i}", body=b"%d" % i)) for i in range(6)]
    await q.claim("svc", "c1", 1, 30, time.time())  # m0 in flight: still in the queue
    listed = await q.messages_from("svc", indexes[0], 3)
    assert [(m.request_id, m.body, m.index) for m in listed] == [
        ("m0", b"0", indexes[0]), ("m1", b"1", indexes[1]), ("m2", b"2", indexes[2])
    ]
    assert [m.request_id for m in await q.messages_from("svc", indexes[4], 10)] == ["m4", "m5"]
    found = await q.find_message("svc", "m3")
    assert found is not None and found.index == indexes[3]
    assert await q.delete_messages("svc", [indexes[3], indexes[3] + 1000]) == 1
    assert await q.find_message("svc", "m3") is None and await q.lookup("svc", "m3") == (None, None)
    assert await q.truncate_messages("svc", indexes[2]) == 2  # m0 (in flight) and m1
    assert [m.request_id for m in await q.messages_from("svc", 0, 10)] == ["m2", "m4", "m5"]
    a = await q.attributes("svc", 10, time.time())
    assert (a.queued, a.in_flight) == (3, 0)
    claimed = await q.claim("svc", "c2", 10, 30, time.time())
    assert [m.request_id for m in claimed] == ["m2", "m4", "m5"]  # what was removed is never delivered


async def test_an_acknowledged_enqueue_survives_kill_9(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A process enqueues and prints each index once acknowledged; it is killed -9 mid-stream.
    Every acknowledged request is in the queue afterwards."""
    url = backend_url(kind, tmp_path, request)
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from openeas.queue import Message, open_backend

        async def main():
            q = open_backend({url!r}, Path({str(tmp_path)!r}))
            async def one(i):
                m = Message("svc", f"k{{i}}", "POST", "/", [], b"x", 0, time.time())
                await q.enqueue(m)
                print(m.request_id, flush=True)
            i = 0
            while True:
                await asyncio.gather(*(one(i + j) for j in range(50)))
                i += 50
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked = []
    assert proc.stdout is not None
    while len(acked) < 500:
        line = proc.stdout.readline()
        assert line, "the enqueuing process stopped"
        acked.append(line.strip())
    proc.kill()
    proc.wait()
    acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    q = open_backend(url, tmp_path)
    try:
        states = [(await q.lookup("svc", rid))[0] for rid in acked]
    finally:
        await q.close()
    assert states == [State.QUEUED] * len(acked)
