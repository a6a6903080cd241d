"""The Lua scripts of the Redis queue backend (:mod:`openeas.queue.redis_streams`): each is one
atomic state change of a service's queue, its keys derived from ``KEYS[1]`` (the service's prefix).
The key layout is in redis_streams' docstring."""

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
redis.call('HSET', p..':msg:'..i, 'eid', redis.call('XADD', p..':in:'..ARGV[7], '*', 'i', i))
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
local eid = redis.call('XADD', stream, '*', 'i', i)
redis.call('HSET', mk, 'state', 0, 'lease', '', 'consumer', '', 'eid', eid)
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
          redis.call('HSET', mk, 'state', 0, 'lease', '', 'consumer', '', 'last_error', err,
            'eid', redis.call('XADD', stream, '*', 'i', i))
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
local f = {'1', false, false}
if i ~= '0' then f = redis.call('HMGET', mk, 'state', 'eid', 'prio') end
if not f[1] or (f[1] ~= '0' and f[1] ~= '1') then return 0 end
local rk = p..':res:'..rid
if redis.call('EXISTS', rk) == 1 then return 0 end
local sink = redis.call('INCR', p..':sinkseq')
redis.call('HSET', rk, 'sink', sink, 'idx', i, 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5],
  'tags', ARGV[6], 'attempts', ARGV[7], 'enq', ARGV[8], 'fin', ARGV[9], 'read', 0)
redis.call('PEXPIRE', rk, ARGV[10])
redis.call('XADD', p..':sink', 'MAXLEN', '~', ARGV[11], sink..'-0', 'rid', rid)
redis.call('ZADD', p..':live', sink, rid)
if i == '0' then return sink end
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
    local eid = redis.call('XADD', p..':in:'..redis.call('HGET', mk, 'prio'), '*', 'i', i)
    redis.call('HSET', mk, 'state', 0, 'attempts', 0, 'eid', eid)
    n = n + 1
  end
end
return n
"""

# Remove requests from the input queue whatever their state: their stream entry, dead-letter
# mark, hash and ids. ARGV: queue indexes.
_DELETE = """
local p = KEYS[1]
local n = 0
for _, i in ipairs(ARGV) do
  local mk = p..':msg:'..i
  local f = redis.call('HMGET', mk, 'state', 'eid', 'prio', 'rid')
  if f[1] then
    if f[2] then
      local stream = p..':in:'..f[3]
      redis.call('XACK', stream, 'dispatch', f[2])
      redis.call('XDEL', stream, f[2])
    end
    redis.call('ZREM', p..':dead', i)
    redis.call('DEL', mk)
    redis.call('HDEL', p..':ids', f[4])
    redis.call('HDEL', p..':byidx', i)
    n = n + 1
  end
end
return n
"""

SCRIPTS = {
    "ensure": _ENSURE,
    "enqueue": _ENQUEUE,
    "claim": _CLAIM,
    "requeue": _REQUEUE,
    "reclaim": _RECLAIM,
    "complete": _COMPLETE,
    "redrive": _REDRIVE,
    "delete": _DELETE,
}
