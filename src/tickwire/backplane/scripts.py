"""The Lua scripts the Redis backplane runs, and the keys they use (docs/scaling.md).

Imports: stdlib only.

Every key of one topic carries the registry's incarnation and the topic's id as a hash tag
(``tw:{5f3a...:17}:m``), so that in a Redis Cluster they live on one slot and a script may
touch them together; the registry's keys share the tag ``{reg}``. The incarnation (new
whenever the registry is lost) keeps an id given again by a new registry away from what
the id named before, which may survive on another primary of a cluster. Offsets stay
below 2**53 (Lua numbers are doubles): at a million messages a second that is 285 years
of one topic.
"""

from __future__ import annotations

import binascii
from typing import Final

__all__ = ["PUBLISH", "RANGE", "REGISTER", "SYNC", "Keys", "slot"]


class Keys:
    """The names of the backplane's keys and channels under *prefix*."""

    def __init__(self, prefix: str, space: str = "") -> None:
        self.prefix = prefix
        self.space = space  # the registry's incarnation: see the module's docstring
        registry = f"{prefix}:{{reg}}"
        self.names = f"{registry}:names"  # hash: topic name -> id
        self.ids = f"{registry}:ids"  # hash: id -> topic name
        self.sequence = f"{registry}:seq"  # the last id given
        self.info = f"{registry}:info"  # hash: topic name -> a table's schema (msgpack)
        self.incarnation = f"{registry}:incarnation"  # set once per Redis data set
        self.registry_channel = f"{registry}:c"  # (id, name) of each new topic

    def meta(self, topic_id: int) -> str:
        """Hash: the topic's epoch and top offset."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:m"

    def history(self, topic_id: int) -> str:
        """Stream: the topic's recent messages, entry id ``<offset>-0``."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:h"

    def rows(self, topic_id: int) -> str:
        """Hash: a table topic's rows (packed key -> packed wire row)."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:r"

    def done(self, topic_id: int, publish_id: str) -> str:
        """String: the answer to one publish call, kept so that a retry gets it again."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:b:{publish_id}"

    def key(self, topic_id: int, key: str) -> str:
        """String: ``<offset>:<digest>`` of a message published with an idempotency key."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:k:{key}"

    def channel(self, topic_id: int) -> str:
        """The pub/sub channel of the topic's relays."""
        return f"{self.prefix}:{{{self.space}:{topic_id}}}:c"

    def probe(self, process: str, n: int = 0) -> str:
        """A pub/sub channel on which a process checks that its subscriptions work (in a
        cluster, one per primary: *n* picks a hash tag on the primary's slots)."""
        return f"{self.prefix}:{{probe:{process}:{n}}}"


def slot(name: str) -> int:
    """The Redis Cluster slot of a key or shard channel: CRC16 (XMODEM) of its hash tag
    (the first non-empty ``{...}``) or of the whole name, modulo 16384."""
    data = name.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % 16384


# KEYS: meta, history, done, rows, then one key per keyed message (in message order).
# ARGV: channel, candidate epoch, guessed first offset (0: none), history length (0: keep
# none), relay, message count, seconds to remember keys and answers, publish command,
# kind (0 stream, 1 table), then per message: payload, key index (0: none, else the KEYS
# index), digest; then for a table: per message its row operations (see below).
#
# Returns {epoch, first, valid, offset...}: each message's offset, or for a message whose
# key was seen: its original offset, or -1 when that key was used for another payload.
# When any key was seen, nothing is published and first is 0: the caller answers those
# messages and sends the rest again (duplicates are rare: a retried client publish).
PUBLISH: Final = """
local done = redis.call('GET', KEYS[3])
if done then return cmsgpack.unpack(done) end
local n = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local result = {0, 0, 0}
local seen_any = false
for i = 1, n do
  local base = 9 + (i - 1) * 3
  local k = tonumber(ARGV[base + 2])
  result[3 + i] = 0
  if k > 0 then
    local seen = redis.call('GET', KEYS[k])
    if seen then
      local sep = string.find(seen, ':', 1, true)
      if string.sub(seen, sep + 1) == ARGV[base + 3] then
        result[3 + i] = tonumber(string.sub(seen, 1, sep - 1))
      else
        result[3 + i] = -1
      end
      seen_any = true
    end
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
result[1] = tonumber(epoch)
if seen_any then return result end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local first = top + 1
local maxlen = tonumber(ARGV[4])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local table_base = 9 + n * 3
for i = 1, n do
  local base = 9 + (i - 1) * 3
  top = top + 1
  local id = string.format('%d-0', top)
  if maxlen > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, id, 'p', ARGV[base + 1], 't', ms)
  end
  local k = tonumber(ARGV[base + 2])
  if k > 0 then
    redis.call('SET', KEYS[k], string.format('%d', top) .. ':' .. ARGV[base + 3], 'EX', ttl)
  end
  result[3 + i] = top
end
if ARGV[9] == '1' then
  -- A table's rows, one hash field per row field (packed key .. field index) and one
  -- for the row's place in the table (packed key .. 0xff): per message, a count of
  -- operations, then each as (S: set, D: delete, C: place a new row, value).
  local at = table_base + 1
  for i = 1, n do
    local count = tonumber(ARGV[at])
    at = at + 1
    for c = 1, count do
      local op, field = ARGV[at], ARGV[at + 1]
      if op == 'S' then
        redis.call('HSET', KEYS[4], field, ARGV[at + 2])
      elseif op == 'D' then
        redis.call('HDEL', KEYS[4], field)
      elseif redis.call('HEXISTS', KEYS[4], field) == 0 then
        redis.call('HSET', KEYS[4], field, redis.call('HINCRBY', KEYS[1], 'rows', 1))
      end
      at = at + 3
    end
  end
end
redis.call('HSET', KEYS[1], 'top', top)
local valid = 0
if tonumber(ARGV[3]) == first then valid = 1 end
result[2] = first
result[3] = valid
redis.call(ARGV[8], ARGV[1], cmsgpack.pack(result[1], first, valid) .. ARGV[5])
redis.call('SET', KEYS[3], cmsgpack.pack(result), 'EX', ttl)
return result
"""

# KEYS: meta, history, rows. ARGV: candidate epoch, the epoch the caller knows ('0': none),
# the last offset it delivered in it.
# Returns {epoch, top, how}: how is 0 (as it was), 1 (created now) or 2 (a new epoch: Redis
# had lost messages the caller had delivered, so their offsets may never be given again).
SYNC: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'top', 0)
  redis.call('DEL', KEYS[2], KEYS[3])
  return {tonumber(ARGV[1]), 0, 1}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
if epoch == ARGV[2] and top < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'top', 0)
  redis.call('DEL', KEYS[2], KEYS[3])
  return {tonumber(ARGV[1]), 0, 2}
end
return {tonumber(epoch), top, 0}
"""

# KEYS: meta, history, rows. ARGV: after offset, most entries, whether to add the rows.
# Returns {epoch, top, now_ms, entries, rows}: entries as XRANGE gives them, from offset
# after + 1 on; rows as HGETALL gives them (empty unless asked), read at the same moment.
RANGE: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {0, 0, 0, {}, {}} end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local entries = {}
if tonumber(ARGV[2]) > 0 then
  local start = string.format('%d-0', tonumber(ARGV[1]) + 1)
  entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', tonumber(ARGV[2]))
end
local rows = {}
if ARGV[3] == '1' then rows = redis.call('HGETALL', KEYS[3]) end
return {tonumber(epoch), top, ms, entries, rows}
"""

# KEYS: names, ids, sequence, info, incarnation. ARGV: name, wanted id (0: any), info
# ('': none), registry channel, publish command, incarnation candidate.
# Returns {id, created, incarnation, info ('' for a stream)}. A wanted id is given when it
# is free: a server that outlived an empty Redis keeps its topics' ids when nobody took
# them meanwhile. The registry channel hears (id, name) and a table's info, packed one
# after the other.
REGISTER: Final = """
local incarnation = redis.call('GET', KEYS[5])
if not incarnation then
  incarnation = ARGV[6]
  redis.call('SET', KEYS[5], incarnation)
end
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then
  if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then
    redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
    redis.call(ARGV[5], ARGV[4], cmsgpack.pack(tonumber(id), ARGV[1]) .. ARGV[3])
  end
  return {tonumber(id), 0, incarnation, redis.call('HGET', KEYS[4], ARGV[1]) or ''}
end
local wanted = tonumber(ARGV[2])
if wanted > 0 and redis.call('HEXISTS', KEYS[2], wanted) == 0 then
  id = wanted
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  if last < wanted then redis.call('SET', KEYS[3], wanted) end
else
  id = redis.call('INCR', KEYS[3])
  while redis.call('HEXISTS', KEYS[2], id) == 1 do id = redis.call('INCR', KEYS[3]) end
end
redis.call('HSET', KEYS[1], ARGV[1], id)
redis.call('HSET', KEYS[2], id, ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[3]) end
redis.call(ARGV[5], ARGV[4], cmsgpack.pack(tonumber(id), ARGV[1]) .. ARGV[3])
return {tonumber(id), 1, incarnation, ARGV[3]}
"""
