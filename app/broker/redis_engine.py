"""What the Redis broker and its presence share: where a cluster's state lives in Redis, the Lua
scripts that change one channel's keys atomically, how records cross it, the translation of
driver errors, and the gate that keeps a restore from crossing the changes it replaces.

Layout, everything under the key prefix (default `c8ws:`), a channel written as
`<len(app)>:<app>:<channel>` so no two channels share a key:
- `pos:<channel>` the channel's position: a hash of `seq` (the last reserved), `epoch`, and
  `base` / `prev` (the epoch this one took over from after a loss, and the seq it started above).
- `records:<channel>` the pub/sub channel its records and presence events cross as JSON.
- `node:<node>` a node's heartbeat, expiring after the heartbeat TTL.
- `nodes:<channel>` the nodes with members there; `members:<node>:<channel>` their member ids.
- `roster:<channel>` present uuids scored in join order; `users:<channel>` their member JSON;
  `pnodes:<channel>` the nodes with presence connections there; `conns:<node>:<channel>` a
  node's presence connections (member id -> uuid) and `here:<node>:<channel>` their number per
  uuid; `leaving:<channel>` uuids without connections, scored by the time (ms) their grace
  period ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from redis.exceptions import RedisError

from app.broker.base import BrokerError
from app.records import ChannelKey, Record


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


_FIELDS = tuple(field.name for field in dataclasses.fields(Record))


def encode_record(record: Record) -> bytes:
    """The record as it crosses Redis: JSON of every field, a binary frame in base64."""
    fields = {name: getattr(record, name) for name in _FIELDS}
    if record.binary is not None:
        fields["binary"] = base64.b64encode(record.binary).decode("ascii")
    try:
        return orjson.dumps(fields)
    except TypeError as error:
        raise BrokerError(f"record {record.seq} of {record.key} is not JSON: {error}") from error


def decode_record(fields: dict[str, Any]) -> Record:
    """The Record `encode_record` was given (parsed from its JSON), every field equal."""
    if fields["binary"] is not None:
        fields["binary"] = base64.b64decode(fields["binary"])
    return Record(**fields)


DRIVER_ERRORS = (RedisError, OSError, TimeoutError)
"""What the driver raises when Redis is unreachable or refuses a command."""


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn the driver's failures into `BrokerError`."""
    try:
        yield
    except DRIVER_ERRORS as error:
        raise BrokerError(f"Redis: cannot {action}: {error or type(error).__name__}") from error


class Gate:
    """Lets calls that commute (adding or removing one connection) through together, and a call
    that replaces what Redis holds of this node (a restore) through alone: a restore sent while
    a change is on its way could undo it, whichever reaches Redis first."""

    def __init__(self) -> None:
        self._shared = 0
        self._idle = asyncio.Event()  # no shared call under way
        self._idle.set()
        self._open = asyncio.Event()  # no exclusive call under way or waiting
        self._open.set()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._shared += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._shared -= 1
            if not self._shared:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._open.clear()  # calls arriving from now on wait for this one
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


# KEYS: pos. ARGV: the highest seq this node saw (or the store holds), the epoch it knows ('' if
# none), a fresh epoch, '1' to create a missing position, '1' to reserve the next seq. Returns
# {seq, epoch, base, prev}, or nil when the position is missing and not to be created.
# A missing position was never made or was lost (Redis restarted without persistence): it
# starts a new epoch above everything the caller knows (its highest seq and, when it creates,
# the store's last one). A position that took over from the epoch the caller knows, below a seq
# the caller saw there, may repeat seqs clients of that epoch already have: it starts again
# above them, still taking over from that epoch. Any other position below what the caller knows
# is an older copy (Redis restored a snapshot taken before seqs it has since handed out): it
# starts again above them too, in a new epoch taking over from the one the copy has.
POSITION = """
local pos, top, known, fresh = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
if redis.call('EXISTS', pos) == 0 then
  if ARGV[4] ~= '1' then return nil end
  redis.call('HSET', pos, 'seq', top, 'epoch', fresh, 'base', top, 'prev', known)
else
  local now = redis.call('HMGET', pos, 'seq', 'epoch', 'base', 'prev')
  local seq = tonumber(now[1])
  if known ~= '' and now[4] == known and top > tonumber(now[3]) then
    seq = math.max(seq, top)
    redis.call('HSET', pos, 'seq', seq, 'epoch', fresh, 'base', seq)
  elseif seq < top then
    redis.call('HSET', pos, 'seq', top, 'epoch', fresh, 'base', top, 'prev', now[2])
  end
end
if ARGV[5] == '1' then redis.call('HINCRBY', pos, 'seq', 1) end
return redis.call('HMGET', pos, 'seq', 'epoch', 'base', 'prev')
"""

# KEYS: nodes:<channel>. ARGV: 'add' | 'remove' | 'count' | 'restore', node, member,
# `members:` prefix, `:<channel>` suffix, `node:` prefix, the channel's pub/sub name, then for
# 'restore' every member the node has there (none: it is going away), replacing what Redis
# holds. Returns the members of live nodes; forgets dead nodes. Unless a 'count' forgot nothing,
# tells the channel's nodes the count may have changed (`{"connections":N}` on its pub/sub).
CONNECTIONS = """
local nodes, op, node, member = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local members, suffix, beats, topic = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local mine = members .. node .. suffix
if op == 'add' then
  redis.call('SADD', mine, member)
elseif op == 'remove' then
  redis.call('SREM', mine, member)
elseif op == 'restore' then
  redis.call('DEL', mine)
  for i = 8, #ARGV do redis.call('SADD', mine, ARGV[i]) end
end
local changed = op ~= 'count'
if changed then
  if redis.call('EXISTS', mine) == 1 then redis.call('SADD', nodes, node)
  else redis.call('SREM', nodes, node) end
end
local total = 0
for _, each in ipairs(redis.call('SMEMBERS', nodes)) do
  -- The calling node is alive, even when Redis lost its heartbeat key (a restart) and its next
  -- beat has not come yet.
  if each == node or redis.call('EXISTS', beats .. each) == 1 then
    total = total + redis.call('SCARD', members .. each .. suffix)
  else
    redis.call('DEL', members .. each .. suffix)
    redis.call('SREM', nodes, each)
    changed = true
  end
end
if changed then redis.call('PUBLISH', topic, '{"connections":' .. total .. '}') end
return total
"""

# KEYS: roster, users, leaving, pnodes. ARGV: op, node, member (a connection's id), uuid, data,
# grace (ms), `here:` prefix, `conns:` prefix, `:<channel>` suffix, `node:` prefix, the channel's
# pub/sub name.
# Every op first sweeps: the connections of dead nodes stop counting, and uuids whose grace
# period is over (or whose node died) leave with a `member_left` event. A node's connections are
# kept one by one, so its joins and leaves commute: each changes only its own connection.
# - 'join': count connection `member` (once) as one of uuid (data: its member JSON); a uuid new
#   to the roster is announced with `member_joined`. Returns the roster, a JSON list of member
#   JSONs in join order.
# - 'leave': stop counting connection `member`; when its uuid has none left anywhere, the uuid
#   starts its grace period. Returns 1 then, else 0.
# - 'restore': replace the node's connections with data, a JSON list of [member, uuid, member
#   JSON] (empty: the node is going away); uuids it adds come back without an event, uuids it
#   drops start their grace period.
# - 'sweep': nothing more.
PRESENCE = """
local roster, users, leaving, pnodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, node, member, uuid, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local grace, here, conns, suffix = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local beats, channel = ARGV[10], ARGV[11]
local counts, mine = here .. node .. suffix, conns .. node .. suffix
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function members()
  local list = {}
  for i, id in ipairs(redis.call('ZRANGE', roster, 0, -1)) do
    list[i] = redis.call('HGET', users, id)
  end
  return '[' .. table.concat(list, ',') .. ']'
end

local function announce(kind, who)
  redis.call('PUBLISH', channel, '{"presence":"' .. kind .. '","member":' .. who ..
    ',"members":' .. members() .. '}')
end

local function connected(id)
  for _, each in ipairs(redis.call('SMEMBERS', pnodes)) do
    if redis.call('HEXISTS', here .. each .. suffix, id) == 1 then return true end
  end
  return false
end

local function add(id, who)
  if not redis.call('ZSCORE', roster, id) then
    local last = redis.call('ZRANGE', roster, -1, -1, 'WITHSCORES')
    redis.call('ZADD', roster, (tonumber(last[2]) or 0) + 1, id)
    redis.call('HSET', users, id, who)
    return true
  end
  return false
end

local function release(id)
  if not connected(id) and redis.call('ZSCORE', roster, id) then
    redis.call('ZADD', leaving, now + grace, id)
    return 1
  end
  return 0
end

local function settle()
  if redis.call('HLEN', counts) == 0 then redis.call('SREM', pnodes, node)
  else redis.call('SADD', pnodes, node) end
end

local function connect(id, who)
  if redis.call('HSETNX', mine, id, who) == 1 then redis.call('HINCRBY', counts, who, 1) end
end

for _, each in ipairs(redis.call('SMEMBERS', pnodes)) do
  if redis.call('EXISTS', beats .. each) == 0 then
    for _, id in ipairs(redis.call('HKEYS', here .. each .. suffix)) do
      redis.call('ZADD', leaving, 'LT', now, id)
    end
    redis.call('DEL', here .. each .. suffix, conns .. each .. suffix)
    redis.call('SREM', pnodes, each)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', leaving, '-inf', now)) do
  redis.call('ZREM', leaving, id)
  if not connected(id) then
    local who = redis.call('HGET', users, id)
    if who then
      redis.call('ZREM', roster, id)
      redis.call('HDEL', users, id)
      announce('member_left', who)
    end
  end
end

if op == 'join' then
  connect(member, uuid)
  settle()
  redis.call('ZREM', leaving, uuid)
  if add(uuid, data) then announce('member_joined', data) end
  return members()
elseif op == 'leave' then
  local id = redis.call('HGET', mine, member)
  if not id then return 0 end
  redis.call('HDEL', mine, member)
  if redis.call('HINCRBY', counts, id, -1) <= 0 then redis.call('HDEL', counts, id) end
  settle()
  return release(id)
elseif op == 'restore' then
  local dropped = {}
  for _, id in ipairs(redis.call('HKEYS', counts)) do dropped[id] = true end
  redis.call('DEL', mine, counts)
  for _, entry in ipairs(cjson.decode(data)) do
    connect(entry[1], entry[2])
    redis.call('ZREM', leaving, entry[2])
    add(entry[2], entry[3])
    dropped[entry[2]] = nil
  end
  settle()
  for id in pairs(dropped) do release(id) end
end
return nil
"""
