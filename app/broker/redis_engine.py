"""What the Redis broker and its presence share: where a cluster's state lives in Redis, the Lua
scripts that change one channel's keys atomically, and the translation of driver errors.

Layout, everything under the key prefix (default `c8ws:`), a channel written as
`<len(app)>:<app>:<channel>` so no two channels share a key:
- `pos:<channel>` the channel's position: a hash of `seq` (the last reserved), `epoch`, and
  `base` / `prev` (the epoch this one took over from after a loss, and the seq it started above).
- `records:<channel>` the pub/sub channel its records and presence events cross as JSON.
- `node:<node>` a node's heartbeat, expiring after the heartbeat TTL.
- `nodes:<channel>` the nodes with members there; `members:<node>:<channel>` their member ids.
- `roster:<channel>` present uuids scored in join order; `users:<channel>` their member JSON;
  `pnodes:<channel>` the nodes with presence connections there; `here:<node>:<channel>` a node's
  connections per uuid; `leaving:<channel>` uuids without connections, scored by the time (ms)
  their grace period ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError

from app.broker.base import BrokerError
from app.records import ChannelKey


def channel_tag(key: ChannelKey) -> str:
    app, channel = key
    return f"{len(app)}:{app}:{channel}"


class Keys:
    """The key names of one cluster (a prefix) as seen from one node."""

    def __init__(self, prefix: str, node: str) -> None:
        self.prefix = prefix
        self.node = node
        self.beat = f"{prefix}node:{node}"
        self.beats = f"{prefix}node:"

    def of(self, kind: str, key: ChannelKey) -> str:
        """`<prefix><kind>:<channel>`."""
        return f"{self.prefix}{kind}:{channel_tag(key)}"

    def per_node(self, kind: str, key: ChannelKey, node: str | None = None) -> str:
        """`<prefix><kind>:<node>:<channel>`, this node's unless `node` is given."""
        return f"{self.prefix}{kind}:{node or self.node}:{channel_tag(key)}"


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn the driver's failures into `BrokerError`."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as error:
        raise BrokerError(f"Redis: cannot {action}: {error or type(error).__name__}") from error


# KEYS: pos. ARGV: the highest seq this node saw, the epoch it knows ('' if none), a fresh epoch,
# '1' to create a missing position, '1' to reserve the next seq. Returns {seq, epoch, base, prev},
# or nil when the position is missing and not to be created.
# A missing position was never made or was lost (Redis restarted without persistence): it
# starts a new epoch above everything the caller knows (its highest seq and, when it creates,
# the store's last one). A position that took over from the epoch the caller knows, below a seq
# the caller saw there, may repeat seqs clients of that epoch already have: it starts again
# above them, still taking over from that epoch.
POSITION = """
local pos, top, known, fresh = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
if redis.call('EXISTS', pos) == 0 then
  if ARGV[4] ~= '1' then return nil end
  redis.call('HSET', pos, 'seq', top, 'epoch', fresh, 'base', top, 'prev', known)
else
  local seq = tonumber(redis.call('HGET', pos, 'seq'))
  if known ~= '' and redis.call('HGET', pos, 'prev') == known
      and top > tonumber(redis.call('HGET', pos, 'base')) then
    seq = math.max(seq, top)
    redis.call('HSET', pos, 'seq', seq, 'epoch', fresh, 'base', seq)
  elseif seq < top then
    redis.call('HSET', pos, 'seq', top)
  end
end
if ARGV[5] == '1' then redis.call('HINCRBY', pos, 'seq', 1) end
return redis.call('HMGET', pos, 'seq', 'epoch', 'base', 'prev')
"""

# KEYS: nodes:<channel>. ARGV: 'add' | 'remove' | 'count', node, member, `members:` prefix,
# `:<channel>` suffix, `node:` prefix. Returns the members of live nodes; forgets dead nodes.
CONNECTIONS = """
local nodes, op, node, member = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local members, suffix, beats = ARGV[4], ARGV[5], ARGV[6]
if op == 'add' then
  redis.call('SADD', members .. node .. suffix, member)
  redis.call('SADD', nodes, node)
elseif op == 'remove' then
  redis.call('SREM', members .. node .. suffix, member)
  if redis.call('SCARD', members .. node .. suffix) == 0 then redis.call('SREM', nodes, node) end
end
local total = 0
for _, each in ipairs(redis.call('SMEMBERS', nodes)) do
  if redis.call('EXISTS', beats .. each) == 1 then
    total = total + redis.call('SCARD', members .. each .. suffix)
  else
    redis.call('DEL', members .. each .. suffix)
    redis.call('SREM', nodes, each)
  end
end
return total
"""

# KEYS: roster, users, leaving, pnodes. ARGV: op, node, uuid, count, data, grace (ms), `here:`
# prefix, `:<channel>` suffix, `node:` prefix, the channel's pub/sub name.
# Every op first sweeps: the connections of dead nodes stop counting, and uuids whose grace
# period is over (or whose node died) leave with a `member_left` event.
# - 'join': node now has `count` connections of uuid (data: its member JSON); a uuid new to the
#   roster is announced with `member_joined`. Returns the roster (member JSONs, join order).
# - 'leave': node now has `count` connections of uuid; with none left anywhere, the uuid starts
#   its grace period.
# - 'restore': replace node's connections with data, a JSON list of [uuid, count, member JSON]
#   (empty: the node is going away); uuids it adds come back without an event, uuids it drops
#   start their grace period.
# - 'sweep': nothing more.
PRESENCE = """
local roster, users, leaving, pnodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, node, uuid, count, data = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local grace, here, suffix, beats, channel = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local mine = here .. node .. suffix
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function members()
  local list = {}
  for i, id in ipairs(redis.call('ZRANGE', roster, 0, -1)) do
    list[i] = redis.call('HGET', users, id)
  end
  return list
end

local function announce(kind, member)
  redis.call('PUBLISH', channel, '{"presence":"' .. kind .. '","member":' .. member ..
    ',"members":[' .. table.concat(members(), ',') .. ']}')
end

local function connected(id)
  for _, each in ipairs(redis.call('SMEMBERS', pnodes)) do
    if redis.call('HEXISTS', here .. each .. suffix, id) == 1 then return true end
  end
  return false
end

local function add(id, member)
  if not redis.call('ZSCORE', roster, id) then
    local last = redis.call('ZRANGE', roster, -1, -1, 'WITHSCORES')
    redis.call('ZADD', roster, (tonumber(last[2]) or 0) + 1, id)
    redis.call('HSET', users, id, member)
    return true
  end
  return false
end

local function release(id)
  if not connected(id) and redis.call('ZSCORE', roster, id) then
    redis.call('ZADD', leaving, now + grace, id)
  end
end

local function settle()
  if redis.call('HLEN', mine) == 0 then redis.call('SREM', pnodes, node)
  else redis.call('SADD', pnodes, node) end
end

for _, each in ipairs(redis.call('SMEMBERS', pnodes)) do
  if redis.call('EXISTS', beats .. each) == 0 then
    for _, id in ipairs(redis.call('HKEYS', here .. each .. suffix)) do
      redis.call('ZADD', leaving, 'LT', now, id)
    end
    redis.call('DEL', here .. each .. suffix)
    redis.call('SREM', pnodes, each)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', leaving, '-inf', now)) do
  redis.call('ZREM', leaving, id)
  if not connected(id) then
    local member = redis.call('HGET', users, id)
    if member then
      redis.call('ZREM', roster, id)
      redis.call('HDEL', users, id)
      announce('member_left', member)
    end
  end
end

if op == 'join' then
  redis.call('HSET', mine, uuid, count)
  settle()
  redis.call('ZREM', leaving, uuid)
  if add(uuid, data) then announce('member_joined', data) end
  return members()
elseif op == 'leave' then
  if count > 0 then redis.call('HSET', mine, uuid, count)
  else redis.call('HDEL', mine, uuid) end
  settle()
  release(uuid)
elseif op == 'restore' then
  local dropped = {}
  for _, id in ipairs(redis.call('HKEYS', mine)) do dropped[id] = true end
  redis.call('DEL', mine)
  for _, entry in ipairs(cjson.decode(data)) do
    redis.call('HSET', mine, entry[1], entry[2])
    redis.call('ZREM', leaving, entry[1])
    add(entry[1], entry[3])
    dropped[entry[1]] = nil
  end
  settle()
  for id in pairs(dropped) do release(id) end
end
return nil
"""
