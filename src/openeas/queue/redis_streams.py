"""The queue backend for several gateways: Redis Streams with a consumer group.

Keys, under ``<prefix>:<service>`` (``prefix`` from the URL's ``?prefix=``, default
``openeas:q``):

| key | type | what |
|---|---|---|
| ``:in:1``, ``:in:0`` | stream + consumer group ``dispatch`` | queued request indexes, priority 1 first |
| ``:msg:<index>`` | hash | the request (method, path, headers, body, tags), its state, attempts, lease |
| ``:ids`` / ``:byidx`` | hash | request id → index, index → request id |
| ``:res:<request id>`` | hash with a TTL | the stored result (``PEXPIRE`` = the result TTL) |
| ``:sink`` | stream | request ids in the order their results were stored (entry id = sink index) |
| ``:live`` | sorted set | request ids of unread results, scored by sink index (truncate, counts) |
| ``:dead`` | sorted set | indexes of dead requests |
| ``:seq``, ``:sinkseq`` | counters | queue index, sink index |

Dispatchers read new entries with ``XREADGROUP`` (each entry goes to one consumer and stays in
the group's pending-entries list until acknowledged). Every state change is one Lua script, so
it is atomic across gateways: a result is stored only if the request has none (exactly one per
request id), a failed attempt is acknowledged and queued again (at the tail) or moved to the dead
letters, and ``reclaim`` walks the pending-entries list (``XPENDING``) for leases past their
``lease_until`` (their dispatcher died). Not for Redis Cluster: a script touches keys it derives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from openeas.queue.model import Attributes, Backlog, DeadLetter, Message, QueueError, Result, State
from openeas.queue.redis_lua import SCRIPTS

DEFAULT_PREFIX = "openeas:q"
GROUP = "dispatch"
SINK_MAXLEN = 1_000_000  # sink entries kept (approximately); results themselves expire by TTL
SCAN_CHUNK = 200  # queue indexes read (or deleted) per round trip

_EXPIRED = "lease expired: the dispatcher holding the request stopped or its replica call outlived the lease"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_url(url: str) -> tuple[str, str]:
    """(the URL for the redis client, the key prefix from ``?prefix=``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    return urlunsplit(parts._replace(query=urlencode(query))), prefix


class RedisQueue:
    """`QueueBackend` over Redis Streams (redis-py's asyncio client)."""

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        client_url, self.prefix = parse_url(url)
        self.url = url
        self.r = aioredis.Redis.from_url(client_url)
        self._scripts = {name: self.r.register_script(src) for name, src in SCRIPTS.items()}
        self._ready: set[str] = set()

    def _p(self, service: str) -> str:
        return f"{self.prefix}:{service}"

    async def _run(self, script: str, service: str, *args: Any) -> Any:
        import redis.exceptions

        p = self._p(service)
        try:
            if service not in self._ready:
                await self._scripts["ensure"](keys=[p])
                self._ready.add(service)
            return await self._scripts[script](keys=[p], args=list(args))
        except redis.exceptions.RedisError as e:
            raise QueueError(f"redis {self.url}: {e}") from e

    async def _call(self, fn: Any, *args: Any) -> Any:
        import redis.exceptions

        try:
            return await fn(*args)
        except redis.exceptions.RedisError as e:
            raise QueueError(f"redis {self.url}: {e}") from e

    # --- QueueBackend ------------------------------------------------------------------------------
    async def enqueue(self, msg: Message) -> int:
        index = await self._run(
            "enqueue",
            msg.service,
            msg.request_id,
            msg.method,
            msg.path,
            json.dumps(msg.headers),
            msg.body,
            json.dumps(msg.tags),
            msg.priority,
            repr(msg.enqueued_at),
        )
        if int(index) < 0:
            raise QueueError(f"request id {msg.request_id} is already in the queue of {msg.service}")
        msg.index = int(index)
        return msg.index

    async def claim(self, service: str, consumer: str, n: int, lease_s: float, now: float) -> list[Message]:
        rows = await self._run("claim", service, consumer, n, repr(now + lease_s))
        out = []
        for i, att, lease, rid, method, path, headers, body, tags, prio, enq in rows:
            out.append(
                Message(
                    service=service,
                    request_id=_s(rid),
                    method=_s(method),
                    path=_s(path),
                    headers=[(str(k), str(v)) for k, v in json.loads(headers)],
                    body=body or b"",
                    priority=int(prio),
                    enqueued_at=float(enq),
                    index=int(i),
                    attempts=int(att),
                    tags=json.loads(tags) if tags else {},
                    lease=_s(lease),
                )
            )
        return out

    async def complete(self, msg: Message, result: Result) -> bool:
        sink = await self._run(
            "complete",
            msg.service,
            msg.index,
            result.request_id,
            result.status,
            json.dumps(result.headers),
            result.body,
            json.dumps(result.tags),
            result.attempts,
            repr(result.enqueued_at),
            repr(result.finished_at),
            max(1, int(result.ttl_s * 1000)),
            SINK_MAXLEN,
        )
        if int(sink) <= 0:
            return False
        result.sink_index = int(sink)
        return True

    async def fail(self, msg: Message, error: str, max_delivery: int, now: float) -> State:
        mode = 1 if msg.attempts >= max_delivery else 0
        return State(int(await self._run("requeue", msg.service, msg.index, msg.lease, mode, error)))

    async def release(self, msgs: list[Message]) -> None:
        for m in msgs:
            await self._run("requeue", m.service, m.index, m.lease, 2, "")

    async def renew(self, consumer: str, msgs: list[Message], lease_s: float, now: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        for m in msgs:
            pipe.hset(f"{self._p(m.service)}:msg:{m.index}", "until", repr(now + lease_s))
        await self._call(pipe.execute)

    async def reclaim(self, service: str, max_delivery: int, now: float) -> int:
        return int(await self._run("reclaim", service, repr(now), max_delivery, _EXPIRED))

    async def _result(self, service: str, rid: str) -> tuple[State | None, Result | None]:
        h = await self._call(self.r.hgetall, f"{self._p(service)}:res:{rid}")
        if not h:
            return None, None
        if h[b"read"] == b"1":
            return State.READ, None
        return State.DONE, Result(
            service=service,
            request_id=rid,
            index=int(h[b"idx"]),
            status=int(h[b"status"]),
            headers=[(str(k), str(v)) for k, v in json.loads(h[b"headers"])],
            body=h.get(b"body", b""),
            attempts=int(h[b"attempts"]),
            enqueued_at=float(h[b"enq"]),
            finished_at=float(h[b"fin"]),
            sink_index=int(h[b"sink"]),
            tags=json.loads(h[b"tags"]) if h.get(b"tags") else {},
        )

    async def lookup(self, service: str, request_id: str) -> tuple[State | None, Result | None]:
        found = await self._result(service, request_id)
        if found[0] is not None:
            return found
        p = self._p(service)
        index = await self._call(self.r.hget, f"{p}:ids", request_id)
        state = None if index is None else await self._call(self.r.hget, f"{p}:msg:{_s(index)}", "state")
        if state is None:
            # Finished between the two reads: the finishing script stores the result and drops the
            # message in one step, so the result is there now (unless it was never accepted).
            return await self._result(service, request_id)
        return State(int(state)), None

    async def lookup_index(self, service: str, index: int) -> tuple[State | None, Result | None]:
        rid = await self._call(self.r.hget, f"{self._p(service)}:byidx", index)
        if rid is None:
            return None, None
        return await self.lookup(service, _s(rid))

    async def mark_read(self, service: str, request_ids: list[str]) -> int:
        n = 0
        p = self._p(service)
        for rid in request_ids:
            key = f"{p}:res:{rid}"
            await self._call(self.r.zrem, f"{p}:live", rid)
            if await self._call(self.r.hget, key, "read") == b"0":
                await self._call(self.r.hset, key, "read", 1)
                await self._call(self.r.hdel, key, "body")
                n += 1
        return n

    async def put_result(self, result: Result) -> int:
        sink = await self._run(
            "complete",
            result.service,
            0,
            result.request_id,
            result.status,
            json.dumps(result.headers),
            result.body,
            json.dumps(result.tags),
            result.attempts,
            repr(result.enqueued_at),
            repr(result.finished_at),
            max(1, int(result.ttl_s * 1000)),
            SINK_MAXLEN,
        )
        result.sink_index = max(int(sink), 0)
        return result.sink_index

    async def lookup_sink(self, service: str, sink_index: int) -> tuple[State | None, Result | None]:
        if sink_index <= 0:
            return None, None
        entry = f"{sink_index}-0"
        found = await self._call(self.r.xrange, f"{self._p(service)}:sink", entry, entry, 1)
        if not found:
            return None, None
        return await self._result(service, _s(found[0][1][b"rid"]))

    async def truncate_results(self, service: str, below: int) -> int:
        live = f"{self._p(service)}:live"
        rids = await self._call(self.r.zrangebyscore, live, "-inf", f"({below}")
        return await self.mark_read(service, [_s(r) for r in rids])

    async def sink_stats(self, service: str) -> tuple[int, int]:
        p = self._p(service)
        unread = await self._call(self.r.zcard, f"{p}:live")
        last = await self._call(self.r.get, f"{p}:sinkseq")
        return int(unread), int(last or 0)

    async def _messages(self, service: str, indexes: list[int]) -> list[Message]:
        """The requests at these indexes that are queued or in flight, in the order given."""
        pipe = self.r.pipeline(transaction=False)
        p = self._p(service)
        for i in indexes:
            pipe.hmget(f"{p}:msg:{i}", "state", "rid", "method", "path", "headers", "body", "tags", "prio",
                       "enq", "attempts")
        out = []
        for i, f in zip(indexes, await self._call(pipe.execute), strict=True):
            if f[0] in (b"0", b"1"):
                out.append(
                    Message(
                        service=service,
                        request_id=_s(f[1]),
                        method=_s(f[2]),
                        path=_s(f[3]),
                        headers=[(str(k), str(v)) for k, v in json.loads(f[4])],
                        body=f[5] or b"",
                        priority=int(f[7]),
                        enqueued_at=float(f[8]),
                        index=i,
                        attempts=int(f[9] or 0),
                        tags=json.loads(f[6]) if f[6] else {},
                    )
                )
        return out

    async def messages_from(self, service: str, index: int, limit: int) -> list[Message]:
        last = int(await self._call(self.r.get, f"{self._p(service)}:seq") or 0)
        out: list[Message] = []
        i = max(index, 1)
        while i <= last and len(out) < limit:
            chunk = list(range(i, min(i + SCAN_CHUNK, last + 1)))
            out += await self._messages(service, chunk)
            i += SCAN_CHUNK
        return out[:limit]

    async def find_message(self, service: str, request_id: str) -> Message | None:
        index = await self._call(self.r.hget, f"{self._p(service)}:ids", request_id)
        if index is None:
            return None
        found = await self._messages(service, [int(index)])
        return found[0] if found else None

    async def delete_messages(self, service: str, indexes: list[int]) -> int:
        n = 0
        for start in range(0, len(indexes), SCAN_CHUNK):
            n += int(await self._run("delete", service, *indexes[start : start + SCAN_CHUNK]))
        return n

    async def truncate_messages(self, service: str, below: int) -> int:
        below_ids = []
        async for index, _rid in self.r.hscan_iter(f"{self._p(service)}:byidx", count=500):
            if int(index) < below:
                below_ids.append(int(index))
        return await self.delete_messages(service, sorted(below_ids))

    async def results_after(self, service: str, sink_index: int, limit: int) -> list[Result]:
        out: list[Result] = []
        start = f"{sink_index + 1}-0"
        while len(out) < limit:
            entries = await self._call(self.r.xrange, f"{self._p(service)}:sink", start, "+", limit)
            if not entries:
                break
            for _eid, fields in entries:
                state, res = await self._result(service, _s(fields[b"rid"]))
                if res is not None and state is State.DONE:
                    out.append(res)
                    if len(out) == limit:
                        break
            last = int(_s(entries[-1][0]).split("-")[0])
            start = f"{last + 1}-0"
        return out

    async def _counts(self, service: str) -> tuple[int, int]:
        p = self._p(service)
        await self._run("ensure", service)
        queued = in_flight = 0
        for prio in ("1", "0"):
            length = await self._call(self.r.xlen, f"{p}:in:{prio}")
            pending = await self._call(self.r.xpending, f"{p}:in:{prio}", GROUP)
            n = int(pending["pending"]) if pending else 0
            in_flight += n
            queued += max(0, int(length) - n)
        return queued, in_flight

    async def attributes(self, service: str, max_length: int, now: float) -> Attributes:
        p = self._p(service)
        queued, in_flight = await self._counts(service)
        dead = await self._call(self.r.zcard, f"{p}:dead")
        results = await self._call(self.r.zcard, f"{p}:live")
        last = await self._call(self.r.get, f"{p}:seq")
        oldest = None
        for prio in ("1", "0"):
            groups = await self._call(self.r.xinfo_groups, f"{p}:in:{prio}")
            last_id = _s(groups[0]["last-delivered-id"]) if groups else "0-0"
            first = await self._call(self.r.xrange, f"{p}:in:{prio}", f"({last_id}", "+", 1)
            if first:
                enq = await self._call(self.r.hget, f"{p}:msg:{_s(first[0][1][b'i'])}", "enq")
                if enq is not None:
                    age = max(0.0, now - float(enq))
                    oldest = age if oldest is None else max(oldest, age)
        return Attributes(queued, in_flight, int(dead), int(results), oldest, int(last or 0), max_length)

    async def backlog(self, service: str) -> Backlog:
        queued, in_flight = await self._counts(service)
        return Backlog(queued, in_flight)

    async def dead_letters(self, service: str, limit: int) -> list[DeadLetter]:
        p = self._p(service)
        out = []
        for i in await self._call(self.r.zrange, f"{p}:dead", 0, limit - 1):
            h = await self._call(self.r.hmget, f"{p}:msg:{_s(i)}", "rid", "attempts", "last_error", "enq")
            if h[0] is not None:
                out.append(DeadLetter(service, _s(h[0]), int(_s(i)), int(h[1]), _s(h[2] or b""), float(h[3])))
        return out

    async def redrive(self, service: str, request_ids: list[str] | None) -> int:
        p = self._p(service)
        if request_ids is None:
            indexes = [_s(i) for i in await self._call(self.r.zrange, f"{p}:dead", 0, -1)]
        else:
            found = [await self._call(self.r.hget, f"{p}:ids", rid) for rid in request_ids]
            indexes = [_s(i) for i in found if i is not None]
        if not indexes:
            return 0
        return int(await self._run("redrive", service, *indexes))

    async def expire(self, now: float) -> int:
        """Results expire by themselves (PEXPIRE); this forgets the ids of expired ones."""
        n = 0
        async for key in self.r.scan_iter(match=f"{self.prefix}:*:ids", count=100):
            p = _s(key)[: -len(":ids")]
            async for rid, index in self.r.hscan_iter(key, count=500):
                i = _s(index)
                if not await self.r.exists(f"{p}:res:{_s(rid)}", f"{p}:msg:{i}"):
                    await self.r.hdel(key, rid)
                    await self.r.hdel(f"{p}:byidx", i)
                    n += 1
        async for key in self.r.scan_iter(match=f"{self.prefix}:*:live", count=100):
            p = _s(key)[: -len(":live")]
            async for rid, _score in self.r.zscan_iter(key, count=500):
                if not await self.r.exists(f"{p}:res:{_s(rid)}"):
                    await self.r.zrem(key, rid)
        return n

    async def close(self) -> None:
        await self.r.aclose()


class RedisBacklog:
    """The control plane's synchronous backlog reader for a Redis queue."""

    def __init__(self, url: str) -> None:
        import redis

        client_url, self.prefix = parse_url(url)
        self.r = redis.Redis.from_url(client_url)

    def backlogs(self, services: list[str]) -> dict[str, Backlog]:
        import redis

        out = {}
        for s in services:
            queued = in_flight = 0
            for prio in ("1", "0"):
                key = f"{self.prefix}:{s}:in:{prio}"
                try:
                    length = int(self.r.xlen(key))
                    pending = self.r.xpending(key, GROUP) if length else None
                except redis.exceptions.ResponseError:  # no group yet: nothing was ever queued
                    length, pending = 0, None
                n = int(pending["pending"]) if pending else 0
                in_flight += n
                queued += max(0, length - n)
            out[s] = Backlog(queued, in_flight)
        return out


def from_url(url: str, data_dir: Path) -> RedisQueue:
    return RedisQueue(url)
