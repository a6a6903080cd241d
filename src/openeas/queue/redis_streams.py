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

from openeas.queue.base import QueueError
from openeas.queue.model import Attributes, Backlog, DeadLetter, Message, Result, State

DEFAULT_PREFIX = "openeas:q"
GROUP = "dispatch"
SINK_MAXLEN = 1_000_000  # sink entries kept (approximately); results themselves expire by TTL

_ENSURE = """
for _, s in ipairs({':in:1', ':in:0'}) do
  local ok = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1]..s, 'dispatch', '0', 'MKSTREAM')
end
return 1
"""

_ENQUEUE = """
local p = KEYS[1]
if redis.call('HEXISTS', p..':ids', ARGV[1]) == 1 then return -1 end
local i = redis.call('INCR', p..':seq')
redis.call('HSET', p..':msg:'..i, 'rid', ARGV[1], 'method', ARGV[2], 'path', ARGV[3], 'headers', ARGV[4],
  'body', ARGV[5], 'tags', ARGV[6], 'prio', ARGV[7], 'enq', ARGV[8], 'attempts', 0, 'state', 0)
redis.call('HSET', p..':ids', ARGV[1], i)
redis.call('HSET', p..':byidx', i, ARGV[1])
redis.call('XADD', p..':in:'..ARGV[7], '*', 'i', i)
return i
"""

_CLAIM = """
local p, consumer, n, lease_until = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for _, prio in ipairs({'1', '0'}) do
  local want = n - #out
  if want <= 0 then break end
  local stream = p..':in:'..prio
  local r = redis.call('XREADGROUP', 'GROUP', 'dispatch', consumer, 'COUNT', want, 'STREAMS', stream, '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      local eid, i = e[1], e[2][2]
      local mk = p..':msg:'..i
      if redis.call('HGET', mk, 'state') ~= '0' then
        redis.call('XACK', stream, 'dispatch', eid)
        redis.call('XDEL', stream, eid)
      else
        local att = redis.call('HINCRBY', mk, 'attempts', 1)
        redis.call('HSET', mk, 'state', 1, 'consumer', consumer, 'lease', consumer..'/'..att, 'eid', eid,
          'until', lease_until)
        local f = redis.call('HMGET', mk, 'rid', 'method', 'path', 'headers', 'body', 'tags', 'prio', 'enq')
        table.insert(out, {i, att, consumer..'/'..att, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]})
      end
    end
  end
end
return out
"""

# Back to the queue (ARGV[3] = 0), dead (1) or released uncounted (2); checks the lease first.
_REQUEUE = """
local p, i, lease, mode, err = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mk = p..':msg:'..i
local f = redis.call('HMGET', mk, 'state', 'lease', 'eid', 'prio', 'attempts')
if not f[1] then return 2 end
if f[1] ~= '1' or (lease ~= '' and f[2] ~= lease) then return tonumber(f[1]) end
local stream = p..':in:'..f[4]
redis.call('XACK', stream, 'dispatch', f[3])
redis.call('XDEL', stream, f[3])
if mode == '1' then
  redis.call('HSET', mk, 'state', 3, 'lease', '', 'consumer', '', 'last_error', err)
  redis.call('ZADD', p..':dead', i, i)
  return 3
end
if mode == '2' then redis.call('HINCRBY', mk, 'attempts', -1) end
if err ~= '' then redis.call('HSET', mk, 'last_error', err) end
redis.call('HSET', mk, 'state', 0, 'lease', '', 'consumer', '')
redis.call('XADD', stream, '*', 'i', i)
return 0
"""

_RECLAIM = """
local p, now, maxd, err = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local n = 0
for _, prio in ipairs({'1', '0'}) do
  local stream = p..':in:'..prio
  for _, e in ipairs(redis.call('XPENDING', stream, 'dispatch', '-', '+', 1000)) do
    local eid = e[1]
    local ent = redis.call('XRANGE', stream, eid, eid)
    if #ent == 0 then
      redis.call('XACK', stream, 'dispatch', eid)
    else
      local i = ent[1][2][2]
      local mk = p..':msg:'..i
      local f = redis.call('HMGET', mk, 'state', 'until', 'attempts', 'eid')
      if f[1] ~= '1' or f[4] ~= eid then
        redis.call('XACK', stream, 'dispatch', eid)
        redis.call('XDEL', stream, eid)
      elseif tonumber(f[2]) < now then
        redis.call('XACK', stream, 'dispatch', eid)
        redis.call('XDEL', stream, eid)
        if tonumber(f[3]) >= maxd then
          redis.call('HSET', mk, 'state', 3, 'lease', '', 'consumer', '', 'last_error', err)
          redis.call('ZADD', p..':dead', i, i)
        else
          redis.call('HSET', mk, 'state', 0, 'lease', '', 'consumer', '', 'last_error', err)
          redis.call('XADD', stream, '*', 'i', i)
        end
        n = n + 1
      end
    end
  end
end
return n
"""

_COMPLETE = """
local p, i, rid = KEYS[1], ARGV[1], ARGV[2]
local mk = p..':msg:'..i
local f = redis.call('HMGET', mk, 'state', 'eid', 'prio')
if not f[1] or (f[1] ~= '0' and f[1] ~= '1') then return 0 end
local rk = p..':res:'..rid
if redis.call('EXISTS', rk) == 1 then return 0 end
local sink = redis.call('INCR', p..':sinkseq')
redis.call('HSET', rk, 'sink', sink, 'idx', i, 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5],
  'tags', ARGV[6], 'attempts', ARGV[7], 'enq', ARGV[8], 'fin', ARGV[9], 'read', 0)
redis.call('PEXPIRE', rk, ARGV[10])
redis.call('XADD', p..':sink', 'MAXLEN', '~', ARGV[11], sink..'-0', 'rid', rid)
if f[2] then
  local stream = p..':in:'..f[3]
  redis.call('XACK', stream, 'dispatch', f[2])
  redis.call('XDEL', stream, f[2])
end
redis.call('DEL', mk)
return sink
"""

_REDRIVE = """
local p = KEYS[1]
local n = 0
for _, i in ipairs(ARGV) do
  local mk = p..':msg:'..i
  if redis.call('ZREM', p..':dead', i) == 1 and redis.call('HGET', mk, 'state') == '3' then
    redis.call('HSET', mk, 'state', 0, 'attempts', 0)
    redis.call('XADD', p..':in:'..redis.call('HGET', mk, 'prio'), '*', 'i', i)
    n = n + 1
  end
end
return n
"""

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
        self._scripts = {
            name: self.r.register_script(src)
            for name, src in (
                ("ensure", _ENSURE),
                ("enqueue", _ENQUEUE),
                ("claim", _CLAIM),
                ("requeue", _REQUEUE),
                ("reclaim", _RECLAIM),
                ("complete", _COMPLETE),
                ("redrive", _REDRIVE),
            )
        }
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
        for rid in request_ids:
            key = f"{self._p(service)}:res:{rid}"
            if await self._call(self.r.hget, key, "read") == b"0":
                await self._call(self.r.hset, key, "read", 1)
                await self._call(self.r.hdel, key, "body")
                n += 1
        return n

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
        results = await self._call(self.r.xlen, f"{p}:sink")
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
