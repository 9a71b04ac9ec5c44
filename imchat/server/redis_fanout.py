"""The clustered fanout: presence and membership in Redis, delivery over routed pub/sub.

Every node subscribes, on one connection, to its own channel ``P ev:<node>`` and to the
all-nodes channel ``P events``. Everything that causes events is a Lua script that changes
state and PUBLISHes the resulting event in one atomic step, only to the nodes hosting one of
its recipients; Redis pushes a subscriber's messages in the order it ran the scripts, so each
node reads one total order of the events meant for it, and within a stream (a room, a DM
pair, the announcements) publish order is seq order. A published envelope names the
recipients on that node (user keys, computed in Redis at publish time, or ``*``); the node
hands the frame to its own sessions of those users. No node keeps a copy of anyone's
membership that delivery depends on.

Envelope (bytes, fields split by ``\\n``): ``hold``, ``op``, ``recipients``, ``payload``.
``op`` is ``+room key`` / ``-room key`` (a membership change the nodes apply to their local
users, for :meth:`is_member`), ``recipients`` space-separated user keys or ``*``.

Reply before event: a request's scripts tag what they publish with the session's hold
(:meth:`hold`). When this node reads its own envelope whose hold is not yet released, it
stops delivering (that envelope and all after it) until the hub has queued the reply and
called :meth:`release`. Envelopes ahead of it are delivered at once; the wait is about one
Redis round trip.

Presence keys (``P`` = prefix)::

    P online            hash   key -> nick of every user with a session somewhere
    P sessions          hash   key -> number of sessions in the cluster
    P nsessions         string total sessions (announce's ``delivered``)
    P members:<room>    hash   key -> nick
    P urooms:<key>      set    rooms of a user (membership belongs to the user)
    P nodes             set    live node ids
    P node:<id>         string heartbeat, expires after the node timeout
    P nodeusers:<id>    hash   key -> sessions on that node (what to undo if it dies)
    P identof           hash   key -> identity id of the online user (its DM peers, its hold)
    P where:<key>       hash   node -> sessions of the user there (which nodes hear them)
    P rnodes:<room>     set    nodes hosting a member of the room
    P rn:<node>:<room>  set    the room's members with a session on that node
    P rs:<node>:<room>  string the same as an envelope lists them ("key key "), for messages

The last four are the node map routing reads; the scripts that change sessions or
membership change it in the same step, so a script never publishes by a stale map.

Presence is scoped (*rev 2*): ``online``/``offline`` go to the user itself, the members of
its rooms and its DM peers (the streams in ``since:<ident>``), never to everyone, so an
arrival costs the size of its own neighbourhood, not of the cluster.

A node refreshes its heartbeat every third of the timeout; every node looks for members of
``nodes`` whose heartbeat expired and reaps them with one script that removes their sessions
and, for users left with none, publishes ``parted`` (``quit``) and ``offline``. A node that
loses Redis closes its sessions with ``shutting_down`` (their state will be reaped), and
reconnects as a new node id, first checking that Redis still has what it acknowledged and
delivered (:mod:`imchat.server.redis_epoch`: if not, the store gets a new epoch). A heartbeat
that finds the epoch changed starts over the same way, so no session keeps void seqs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError, ResponseError

from imchat.protocol import ErrorCode, ProtocolError, encode_frame

from .fanout import Recipients, runs_by_class, send_run_to_runs, send_to_runs
from .gate import Gate
from .identities import evict, written_to_any
from .peer import User
from .redis_raw import (
    NO_MESSAGE,
    PushedSubscription,
    RawSubscription,
    push_subscription,
    raw_subscription,
)
from .redis_store import (
    LUA_PRELUDE,
    RedisStore,
    RedisUnavailable,
    connect_redis,
    lua_for,
    run_pipeline,
)
from .redis_typed import blobs, close_pubsub, text, texts

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from .peer import Peer
    from .registry import Registry

log = logging.getLogger(__name__)

DEFAULT_NODE_TIMEOUT = 15.0
#: Seconds between attempts to reach Redis again after losing it.
RECONNECT_DELAY = 1.0
#: Seconds each step of leaving the cluster at shutdown may take.
CLOSE_TIMEOUT = 5.0
#: A frame's length prefix (:func:`imchat.protocol.encode_frame`), packed without its call.
_HEADER = struct.Struct(">I").pack
#: Distinct recipient lists whose parsed form is kept.
RECIPIENT_CACHE = 1024
#: DMs kept for an offline user read per Redis reply at its next hello (up to
#: ``max_queued``, 1,000 by default, wait): one reply stays small however long the queue.
PENDING_PAGE = 100

#: Lua helpers: JSON string escaping for nicks (``\\`` is a legal nick character), the node
#: map kept with every presence and membership change (``where:``, ``rnodes:``, ``rn:``, see
#: the module docstring) and the "user left the cluster" logic shared by disconnect and reap.
LUA_FANOUT = (
    LUA_PRELUDE
    + """
local function jstr(s)
  return '"' .. string.gsub(s, '\\\\', '\\\\\\\\') .. '"'
end
-- The room is heard on `node` for `key` (a member with a session there).
-- `rs:` is `rn:` as the string an envelope lists (appended to; the key cut out of it after a
-- removal: rebuilding it from the set cost a room of N members N strings at every leave).
local function route_at(prefix, key, room, node)
  if redis.call('SADD', prefix .. 'rn:' .. node .. ':' .. room, key) == 1 then
    redis.call('APPEND', prefix .. 'rs:' .. node .. ':' .. room, key .. ' ')
  end
  redis.call('SADD', prefix .. 'rnodes:' .. room, node)
end
local function unroute_at(prefix, key, room, node)
  local here = prefix .. 'rn:' .. node .. ':' .. room
  local listed = prefix .. 'rs:' .. node .. ':' .. room
  local removed = redis.call('SREM', here, key) == 1
  if redis.call('SCARD', here) == 0 then
    redis.call('DEL', listed)
    redis.call('SREM', prefix .. 'rnodes:' .. room, node)
  elseif removed then
    local was = redis.call('GET', listed) or ''
    local at = string.find(' ' .. was, ' ' .. key .. ' ', 1, true)
    if at then
      redis.call('SET', listed, string.sub(was, 1, at - 1) .. string.sub(was, at + #key + 1))
    else  -- not listed (a string out of step with its set): list the set again
      redis.call('SET', listed, table.concat(redis.call('SMEMBERS', here), ' ') .. ' ')
    end
  end
end
-- `key` became (stopped being) a member of `room`: on every node with a session of theirs.
local function route(prefix, key, room)
  for _, node in ipairs(redis.call('HKEYS', prefix .. 'where:' .. key)) do
    route_at(prefix, key, room, node)
  end
end
local function unroute(prefix, key, room)
  for _, node in ipairs(redis.call('HKEYS', prefix .. 'where:' .. key)) do
    unroute_at(prefix, key, room, node)
  end
end
-- One more session of `key` on `node`: the node hears the user's rooms from its first on.
local function arrive(prefix, key, node)
  if redis.call('HINCRBY', prefix .. 'where:' .. key, node, 1) == 1 then
    for _, room in ipairs(redis.call('SMEMBERS', prefix .. 'urooms:' .. key)) do
      route_at(prefix, key, room, node)
    end
  end
end
-- `n` sessions fewer of `key` on `node`: after its last, the node hears none of its rooms.
local function depart(prefix, key, node, n)
  local where = prefix .. 'where:' .. key
  if redis.call('HINCRBY', where, node, -n) <= 0 then
    redis.call('HDEL', where, node)
    for _, room in ipairs(redis.call('SMEMBERS', prefix .. 'urooms:' .. key)) do
      unroute_at(prefix, key, room, node)
    end
  end
end
-- The keys of an identity's DM peers (who hears its presence besides its rooms); only those
-- online when it has more peers than the cluster has users online: then one read of the
-- session counts replaces a lookup of each peer's nodes, so the work is bounded by the
-- smaller of the two.
local function peers(prefix, ident, out, seen)
  if not ident then return end
  local found = {}
  for _, stream in ipairs(redis.call('HKEYS', prefix .. 'since:' .. ident)) do
    local low, high = string.match(stream, '^d:(%S+) (%S+)$')
    for _, k in ipairs({low, high}) do
      if k and not seen[k] then seen[k] = true; table.insert(found, k) end
    end
  end
  local sessions = prefix .. 'sessions'
  if #found == 0 then return end
  if #found <= redis.call('HLEN', sessions) then
    for _, k in ipairs(found) do table.insert(out, k) end
    return
  end
  local counts, online = redis.call('HGETALL', sessions), {}
  for i = 1, #counts, 2 do
    if tonumber(counts[i + 1]) > 0 then online[counts[i]] = true end
  end
  for _, k in ipairs(found) do
    if online[k] then table.insert(out, k) end
  end
end
-- `key` leaves `room` (quit, or its identity outranked): `parted` to the members left.
local function quit_room(prefix, key, room, nick, ts, offline_by, offline_order)
  redis.call('HDEL', prefix .. 'members:' .. room, key)
  unroute(prefix, key, room)
  local by, order = {}, {}
  group_room(prefix, room, by, order)
  flush(prefix, by, order, '', '-' .. room .. ' ' .. key, '{"type":"parted","room":"' ..
    room .. '","nick":' .. jstr(nick) .. ',"ts":' .. ts .. ',"reason":"quit"}')
  if offline_by then group_room(prefix, room, offline_by, offline_order) end
end
local function gone(prefix, key, hold_ms)
  local nick = redis.call('HGET', prefix .. 'online', key) or key
  local ident = redis.call('HGET', prefix .. 'identof', key)
  redis.call('HDEL', prefix .. 'online', key)
  redis.call('HDEL', prefix .. 'sessions', key)
  redis.call('HDEL', prefix .. 'identof', key)
  local ts = now_ts()
  local rooms = redis.call('SMEMBERS', prefix .. 'urooms:' .. key)
  table.sort(rooms)
  local by, order = {}, {}
  for _, room in ipairs(rooms) do quit_room(prefix, key, room, nick, ts, by, order) end
  redis.call('DEL', prefix .. 'urooms:' .. key)
  local audience, seen = {}, {}
  peers(prefix, ident, audience, seen)
  group_keys(prefix, audience, by, order)
  if ident then
    local guest = prefix .. 'guest:' .. key
    if redis.call('HGET', guest, 'ident') == ident then
      -- A guest identity is held for guest_hold seconds, its queue with it (rev 2).
      -- Everything kept for it goes with it when the hold ends (no key outlives a guest).
      local owned = {guest, prefix .. 'pending:' .. ident, prefix .. 'since:' .. ident,
        prefix .. 'cid:' .. ident, prefix .. 'markers:' .. ident, prefix .. 'pendingby:' .. ident}
      for _, k in ipairs(owned) do
        if tonumber(hold_ms) > 0 then redis.call('PEXPIRE', k, hold_ms)
        else redis.call('DEL', k) end
      end
    end
  end
  flush(prefix, by, order, '', '', '{"type":"offline","nick":' .. jstr(nick) .. ',"ts":' ..
    ts .. '}')
end
"""
)

#: ARGV: prefix, channel, node, key, nick, exclusive (0/1), hold, identity id, page size.
#: Returns {status, nick, rooms, undelivered DMs, queue length}: status 1 came online (the
#: oldest page of the DMs queued for the identity is read, atomically with that, and the
#: queue's length; they stay queued until written to a session, and nothing joins the queue
#: while the user is online), 0 already online, -1 nick taken, -2 this node was reaped.
CONNECT_LUA = (
    LUA_FANOUT
    + """
local prefix, node, key, nick, hold = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[7]
local ident = ARGV[8]
if redis.call('SISMEMBER', prefix .. 'nodes', node) == 0 then return {-2, '', {}, {}, 0} end
local n = tonumber(redis.call('HGET', prefix .. 'sessions', key) or '0')
if n > 0 and ARGV[6] == '1' then
  return {-1, redis.call('HGET', prefix .. 'online', key) or nick, {}, {}, 0}
end
redis.call('HINCRBY', prefix .. 'sessions', key, 1)
redis.call('HINCRBY', prefix .. 'nodeusers:' .. node, key, 1)
redis.call('INCR', prefix .. 'nsessions')
arrive(prefix, key, node)
local status = 0
local pending = {}
local queued = 0
local prev = redis.call('HGET', prefix .. 'identof', key)
if n > 0 and prev and prev ~= ident then
  -- An account outranks the guest identity online under its nick (rev 2): that identity
  -- leaves its rooms and every node ends its sessions; it shares nothing with the account.
  local old_nick = redis.call('HGET', prefix .. 'online', key) or key
  local ts = now_ts()
  for _, room in ipairs(redis.call('SMEMBERS', prefix .. 'urooms:' .. key)) do
    quit_room(prefix, key, room, old_nick, ts, nil, nil)
  end
  redis.call('DEL', prefix .. 'urooms:' .. key)
  local by, order = {}, {}
  group_keys(prefix, {key}, by, order)
  flush(prefix, by, order, '', '!' .. key .. ' ' .. ident, '')
  redis.call('HSET', prefix .. 'sessions', key, 1)  -- this session alone
  n = 0
end
redis.call('HSET', prefix .. 'identof', key, ident)
local guest = prefix .. 'guest:' .. key
if redis.call('HGET', guest, 'ident') == ident then
  -- online: no longer counting down a hold
  for _, k in ipairs({guest, prefix .. 'pending:' .. ident, prefix .. 'since:' .. ident,
      prefix .. 'cid:' .. ident, prefix .. 'markers:' .. ident, prefix .. 'pendingby:' .. ident}) do
    redis.call('PERSIST', k)
  end
end
-- Every session reads the queue for itself: one that never reads holds nothing back.
local queue = prefix .. 'pending:' .. ident
pending = redis.call('LRANGE', queue, 0, tonumber(ARGV[9] or '100') - 1)
queued = redis.call('LLEN', queue)
if n == 0 then
  redis.call('HSET', prefix .. 'online', key, nick)
  status = 1
  local by, order = {}, {}
  for _, room in ipairs(redis.call('SMEMBERS', prefix .. 'urooms:' .. key)) do
    group_room(prefix, room, by, order)
  end
  local audience, seen = {key}, {}
  seen[key] = true
  peers(prefix, ident, audience, seen)
  group_keys(prefix, audience, by, order)  -- this node among them: it gets the hold
  flush(prefix, by, order, hold, '', '{"type":"online","nick":' .. jstr(nick) .. ',"ts":' ..
    now_ts() .. '}')
else
  nick = redis.call('HGET', prefix .. 'online', key) or nick
  to_node(prefix, node, envelope(hold, '', '', ''))
end
return {status, nick, redis.call('SMEMBERS', prefix .. 'urooms:' .. key), pending, queued}
"""
)

#: ARGV: prefix, channel, node, key, guest hold ms, identity id. Returns 1 if the user left
#: the cluster.
DISCONNECT_LUA = (
    LUA_FANOUT
    + """
local prefix, node, key, hold_ms = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local here = prefix .. 'nodeusers:' .. node
if redis.call('HEXISTS', here, key) == 0 then return 0 end
if redis.call('HINCRBY', here, key, -1) <= 0 then redis.call('HDEL', here, key) end
redis.call('DECR', prefix .. 'nsessions')
depart(prefix, key, node, 1)
local current = redis.call('HGET', prefix .. 'identof', key)
if current and current ~= ARGV[6] then return 0 end  -- a session of an outranked identity
if redis.call('HINCRBY', prefix .. 'sessions', key, -1) <= 0 then
  gone(prefix, key, hold_ms)
  return 1
end
return 0
"""
)

#: ARGV: prefix, channel, dead node id, guest hold ms. Returns the number of users that left
#: the cluster.
REAP_LUA = (
    LUA_FANOUT
    + """
local prefix, dead, hold_ms = ARGV[1], ARGV[3], ARGV[4]
if redis.call('EXISTS', prefix .. 'node:' .. dead) == 1 then return -1 end
if redis.call('SREM', prefix .. 'nodes', dead) == 0 then return -1 end
-- Only the reaped node needs to know (it starts over if it was merely frozen).
to_node(prefix, dead, envelope('', 'reaped ' .. dead, '', ''))
local here = prefix .. 'nodeusers:' .. dead
local users = redis.call('HGETALL', here)
local left = 0
for i = 1, #users, 2 do
  local key, n = users[i], tonumber(users[i + 1])
  redis.call('DECRBY', prefix .. 'nsessions', n)
  depart(prefix, key, dead, n)
  if redis.call('HINCRBY', prefix .. 'sessions', key, -n) <= 0 then
    gone(prefix, key, hold_ms)
    left = left + 1
  end
end
redis.call('DEL', here)
return left
"""
)

#: ARGV: prefix, channel, node, guest hold ms, then pairs of user key and the sessions this
#: node has of it.
#: Lowers the node's recorded sessions of each user to what it really has (a disconnect that
#: failed while Redis was paused or refusing writes left them higher) and lets users left with
#: none leave the cluster. Returns the number of users that left.
RECONCILE_LUA = (
    LUA_FANOUT
    + """
local prefix, node, hold_ms = ARGV[1], ARGV[3], ARGV[4]
local here = prefix .. 'nodeusers:' .. node
local left = 0
for i = 5, #ARGV, 2 do
  local key, expected = ARGV[i], tonumber(ARGV[i + 1])
  local n = tonumber(redis.call('HGET', here, key) or '0')
  if n > expected then
    if expected == 0 then
      redis.call('HDEL', here, key)
    else
      redis.call('HSET', here, key, expected)
    end
    redis.call('DECRBY', prefix .. 'nsessions', n - expected)
    depart(prefix, key, node, n - expected)
    if redis.call('HINCRBY', prefix .. 'sessions', key, expected - n) <= 0 then
      gone(prefix, key, hold_ms)
      left = left + 1
    end
  end
end
return left
"""
)

#: ARGV: prefix, channel, key, nick, room, hold. Returns 1 if the user became a member.
JOIN_LUA = (
    LUA_FANOUT
    + """
local prefix, key, nick, room, hold = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local members = prefix .. 'members:' .. room
if redis.call('HSETNX', members, key, nick) == 0 then return 0 end
redis.call('SADD', prefix .. 'urooms:' .. key, room)
-- Routed in the same step: the next message of the room reaches every node of the user.
route(prefix, key, room)
local by, order = {}, {}
group_room(prefix, room, by, order)
flush(prefix, by, order, hold, '+' .. room .. ' ' .. key,
  '{"type":"joined","room":"' .. room .. '","nick":' .. jstr(nick) .. ',"ts":' .. now_ts() .. '}')
return 1
"""
)

#: ARGV: prefix, channel, key, nick, room, hold. Returns 1 if the user was a member.
PART_LUA = (
    LUA_FANOUT
    + """
local prefix, key, nick, room, hold = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local members = prefix .. 'members:' .. room
if redis.call('HDEL', members, key) == 0 then return 0 end
redis.call('SREM', prefix .. 'urooms:' .. key, room)
unroute(prefix, key, room)
local by, order = {}, {}
group_room(prefix, room, by, order)
group_keys(prefix, {key}, by, order)
flush(prefix, by, order, hold, '-' .. room .. ' ' .. key,
  '{"type":"parted","room":"' .. room .. '","nick":' .. jstr(nick) .. ',"ts":' .. now_ts() .. '}')
return 1
"""
)

#: ARGV: prefix, channel, room, payload. Publishes to the room's members as they are now.
TO_ROOM_LUA = (
    LUA_PRELUDE
    + """
local by, order = {}, {}
group_room(ARGV[1], ARGV[3], by, order)
flush(ARGV[1], by, order, '', '', ARGV[4])
return #order
"""
)

#: ARGV: prefix, channel, payload, then user keys. Publishes to those users' nodes.
TO_USERS_LUA = (
    LUA_PRELUDE
    + """
local keys = {}
for i = 4, #ARGV do table.insert(keys, ARGV[i]) end
local by, order = {}, {}
group_keys(ARGV[1], keys, by, order)
flush(ARGV[1], by, order, '', '', ARGV[3])
return #order
"""
)

#: ARGV: prefix, node, timeout ms. Refreshes the heartbeat; 0 if the node was reaped.
HEARTBEAT_LUA = """
if redis.call('SISMEMBER', ARGV[1] .. 'nodes', ARGV[2]) == 0 then return 0 end
redis.call('SET', ARGV[1] .. 'node:' .. ARGV[2], '1', 'PX', ARGV[3])
return 1
"""


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again if one swallowed it.

    A cancellation that lands inside a redis-py command can be lost (the task then goes on
    to its next sleep); a single cancel() could leave shutdown waiting forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: nothing to log about a task we stopped


class RedisLost(Exception):
    """This node can no longer rely on Redis (unreachable, or it was reaped as dead)."""


class EpochChanged(RedisLost):
    """Another node rotated the store's epoch (Redis lost writes) or Redis was reset: the
    seqs this node's sessions hold may be void, so they start over with the new epoch."""


class RedisFanout:
    """:class:`imchat.server.fanout.Fanout` for a node of a cluster sharing one Redis."""

    sends_undelivered = True

    def __init__(
        self,
        store: RedisStore,
        *,
        node_timeout: float = DEFAULT_NODE_TIMEOUT,
        guest_hold: float = 300.0,
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self.node_timeout = node_timeout
        #: Seconds a guest identity is held after the cluster's last session of it ends.
        self.guest_hold = guest_hold
        self.node_id = ""
        self.available = False
        self._users: dict[str, User] = {}
        self._local_sessions = 0
        self._holds: dict[Peer, str] = {}
        #: Undelivered DMs read at connect (the first page, the queue's length), sent at
        #: release (after the welcome).
        self._undelivered: dict[Peer, tuple[list[bytes], int]] = {}
        #: The holds not yet released, as envelopes carry them (bytes: no ``decode`` of every
        #: envelope's hold to look it up).
        self._awaiting: set[bytes] = set()
        self._hold_ids = itertools.count(1)
        #: Waiters of :meth:`caught_up` by the token of the envelope they published.
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_ids = itertools.count(1)
        #: The barrier queued in the outbox and not yet published: later callers share it.
        self._queued_barrier: asyncio.Future[None] | None = None
        self._inbox: deque[list[bytes]] = deque()
        #: The subscription as read by :meth:`_take_pushed` (None: not taken over).
        self._pushed: PushedSubscription | None = None
        self._loop_time: Callable[[], float] = time.monotonic  # the loop's, once reading
        #: The sessions here of the users a recipient list names, by list, in runs of one
        #: class (as :class:`LocalFanout` keeps a room's): valid while ``_users`` and their
        #: sessions stay the same (cleared when a user or a session arrives or leaves here).
        self._recipients: dict[bytes, Recipients] = {}
        self._outbox: list[tuple[str, str, bytes]] = []
        self._outbox_ready = asyncio.Event()
        self._registry: Registry | None = None
        self._pubsub_client = connect_redis(store.url, blocking=True, prefix=store.keys.prefix)
        self._pubsub: PubSub | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        sharded = store.sharded

        def register(script: str) -> Any:
            return self.redis.register_script(lua_for(script, sharded=sharded))

        #: What each script declares as KEYS (Redis Cluster routes and checks by it).
        self._anchor = [self.keys.anchor]
        self._connect = register(CONNECT_LUA)
        self._disconnect = register(DISCONNECT_LUA)
        self._reap = register(REAP_LUA)
        self._join = register(JOIN_LUA)
        self._part = register(PART_LUA)
        self._to_room = register(TO_ROOM_LUA)
        self._to_users = register(TO_USERS_LUA)
        self._heartbeat = register(HEARTBEAT_LUA)
        self._reconcile = register(RECONCILE_LUA)
        #: Session records in Redis are made under ``shared``; reconciling them is exclusive.
        self._gate = Gate()
        #: What this node acknowledged or delivered, to find writes Redis lost (issue 13).
        self._seen = store.seen
        #: Loop time of the last thing read from the subscription (a pong included).
        self._pubsub_heard = 0.0
        #: Set with a reason when this node must start over (it learnt it was reaped).
        self._alarm = asyncio.Event()
        self._alarm_reason = ""
        #: Since when heartbeats have succeeded without a break (None: the last one failed).
        self._healthy_since: float | None = None
        #: A connect or disconnect script failed, so what Redis records of this node's users
        #: may differ from what is here: the next heartbeat reconciles them (see
        #: :meth:`_reconcile_sessions`; reading the records costs O(users), so not always).
        self._records_suspect = False

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, registry: Registry) -> None:
        """Subscribe and register before the server listens, so no event can be missed."""
        self._registry = registry
        try:
            await self._start_incarnation()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot use Redis at {self.store.url}: {exc}") from None
        self._runner = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Publish what is queued and leave the cluster (the node's sessions are gone)."""
        self._closing = True
        if self._runner is not None:
            await _cancel_all([self._runner, *self._tasks])
        # Bounded: shutting down must not hang on a Redis that stopped answering.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._leave_cluster(), CLOSE_TIMEOUT)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._close_pubsub(), CLOSE_TIMEOUT)
            await asyncio.wait_for(self._pubsub_client.aclose(), CLOSE_TIMEOUT)

    async def _leave_cluster(self) -> None:
        await self._publish_outbox()
        await self._reap_incarnation(self.node_id)

    async def _reap_incarnation(self, node_id: str) -> None:
        """Take this node's sessions of an incarnation out of the cluster now, instead of
        leaving them online until the heartbeat expires."""
        if node_id:
            await self.redis.delete(self.keys.node(node_id))
            await self._reap(
                keys=self._anchor,
                args=[self.keys.prefix, self.keys.channel, node_id, self._hold_ms()],
            )

    async def _start_incarnation(self) -> None:
        """Subscribe, then join the cluster under a fresh node id."""
        self._inbox.clear()
        self._awaiting.clear()
        self._holds.clear()
        self._undelivered.clear()
        self._outbox.clear()
        self._alarm.clear()
        self._healthy_since = None
        self._records_suspect = False  # a fresh node id records nobody yet
        for barrier in self._barriers.values():  # what they waited for is gone with Redis
            if not barrier.done():
                barrier.set_result(None)
        self._barriers.clear()
        self._queued_barrier = None
        node_id = secrets.token_hex(6)
        pubsub = self._pubsub_client.pubsub()
        try:
            # One connection for both: the node reads them in the one order Redis ran the
            # scripts in. No script publishes to the node before it is in ``P nodes``.
            channels = (self.keys.channel, self.keys.node_channel(node_id))
            if self.store.sharded:
                await pubsub.ssubscribe(*channels)
            else:
                await pubsub.subscribe(*channels)
        except BaseException:
            await close_pubsub(pubsub)
            raise
        self._pubsub = pubsub
        self.node_id = node_id
        try:
            # Before any session: the epoch they are welcomed with covers what Redis holds.
            await self.store.verify_epoch()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.node(self.node_id), "1", px=int(self.node_timeout * 1000))
                pipe.sadd(self.keys.nodes, self.node_id)
                await pipe.execute()
        except BaseException:
            await self._close_pubsub()
            raise
        self.available = True
        log.info("joined the cluster as node %s", self.node_id)

    async def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await close_pubsub(self._pubsub)
            self._pubsub = None

    async def _run(self) -> None:
        """Read, publish and heartbeat; on losing Redis, drop every session and start over."""
        while not self._closing:
            self._tasks = tasks = [
                asyncio.create_task(self._read()),
                asyncio.create_task(self._publish_loop()),
                asyncio.create_task(self._heartbeat_loop()),
                asyncio.create_task(self._watch()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                reason = next((t.exception() for t in done if t.exception() is not None), None)
            finally:
                await _cancel_all(tasks)
            if self.available:  # not already declared lost by _drain (this node was reaped)
                self._lost(reason)
            await self._close_pubsub()
            # Where Redis still answers (a dead subscription, a reap noticed late), the users
            # of the lost incarnation go offline now, so they can come back at once.
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._reap_incarnation(self.node_id), CLOSE_TIMEOUT)
            # Pooled connections to the lost Redis would each fail once more (commands are
            # never retried): drop them all, so the next incarnation starts clean.
            with contextlib.suppress(RedisError, OSError):
                await self.redis.connection_pool.disconnect()
            # Redis is fine when only the epoch changed: start over at once.
            delay = 0.0 if isinstance(reason, EpochChanged) else RECONNECT_DELAY
            while not self._closing:
                await asyncio.sleep(delay)
                delay = RECONNECT_DELAY
                try:
                    await self._start_incarnation()
                    break
                except (RedisError, OSError) as exc:
                    log.warning("Redis still unreachable: %s", exc)

    def _lost(self, reason: BaseException | None) -> None:
        """Tell every client ``shutting_down``: events may have been missed, acks can't be given."""
        self.available = False
        message = "server lost its cluster store"
        if isinstance(reason, EpochChanged):
            # Sessions welcomed with the old epoch may hold seqs that now mean other messages.
            log.warning("%s: closing every session (their seqs may be void)", reason)
            message = "the server's history was reset: reconnect for the new epoch"
        else:
            log.error("lost Redis (%s): closing every session; retrying", reason)
        # Detach everyone now: their state in Redis belongs to this incarnation, which is
        # reaped as a whole, so a late disconnect must not touch the next one's counts.
        for user in self._users.values():
            user.sessions.clear()
        self._users.clear()
        self._recipients.clear()
        self._local_sessions = 0
        if self._registry is None:
            return
        error = ProtocolError(ErrorCode.SHUTTING_DOWN, message)
        for session in list(self._registry.sessions):
            session.fail(error)

    # -- receiving -------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._pubsub is not None
        pubsub = self._pubsub
        pushed = push_subscription(pubsub, self._take_pushed)
        if pushed is not None:
            await self._read_pushed(pushed)
            return
        raw = raw_subscription(pubsub)
        if raw is not None:
            await self._read_raw(raw)
            return
        inbox = self._inbox
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._pubsub_heard = loop.time()
            if message is None:
                continue
            kind = message.get("type")
            if kind == "message" or kind == "smessage":
                inbox.append(message["data"].split(b"\n", 3))
                self._drain()
            elif kind == "unsubscribe" or kind == "sunsubscribe":
                # Redis ended the subscription itself: on Redis Cluster, the slot's primary
                # became a replica (a failover). What follows would be missed: start over.
                raise RedisLost(f"Redis ended the subscription to {text(message['channel'])}")

    async def _read_pushed(self, pushed: PushedSubscription) -> None:
        """:meth:`_read` with the socket taken over: the envelopes are handled as each chunk
        arrives (:meth:`_take_pushed`); this waits for the subscription to end."""
        self._pushed = pushed
        self._loop_time = asyncio.get_running_loop().time
        try:
            pushed.poll()  # what redis-py had read already
            reason = await asyncio.shield(pushed.ended)
        finally:
            pushed.stop()  # cancelled (starting over, closing): nothing more is acted on
            self._pushed = None
        raise reason if reason is not None else RedisLost("the subscription stopped")

    def _take_pushed(self) -> None:
        """Every envelope one chunk of the subscription completed, in order (called by
        :class:`PushedSubscription`, in the transport's callback).

        While nothing waits in the inbox, envelopes without a membership op or a hold of
        this node's are delivered as they are parsed, in runs as :meth:`_drain` makes them
        (a busy room's usual case: no queue in between); from the first one that is not,
        everything goes to the inbox behind it and :meth:`_drain` takes over, after the run
        so far has gone out.
        """
        pushed = self._pushed
        assert pushed is not None
        inbox = self._inbox
        awaiting = self._awaiting
        note_event = self._seen.note_event
        queue = bool(inbox) or self._alarm.is_set()
        run: list[bytes] = []  # payloads for ``run_to``, not yet delivered
        run_to = b""
        gets = pushed.gets
        try:
            while True:
                # PushedSubscription.messages, inline (no generator resumed per envelope).
                message = gets()
                if type(message) is not list:
                    if message is NO_MESSAGE:
                        break
                    if isinstance(message, BaseException):
                        raise message
                kind = message[0]
                if kind == b"message" or kind == b"smessage":
                    envelope = message[2].split(b"\n", 3)
                    if queue:
                        inbox.append(envelope)
                        continue
                    hold, op, recipients, payload = envelope
                    if op or (hold and hold in awaiting):
                        inbox.append(envelope)
                        queue = True
                        continue
                    if payload:
                        # Any node may have acknowledged it and be gone: a witness too.
                        note_event(payload)
                        if recipients:
                            if recipients != run_to and run:
                                self._deliver_run(run_to, run)
                                run = []
                            run_to = recipients
                            run.append(payload)
                elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                    # As in _read: on Redis Cluster, the slot's primary became a replica.
                    raise RedisLost(f"Redis ended the subscription to {text(message[1])}")
        finally:
            if run:
                self._deliver_run(run_to, run)
        self._pubsub_heard = self._loop_time()
        if inbox:
            self._drain()

    async def _read_raw(self, raw: RawSubscription) -> None:
        """:meth:`_read` with hiredis: every envelope one socket read brought, then one drain."""
        inbox = self._inbox
        loop = asyncio.get_running_loop()
        while True:
            for message in raw.messages():
                kind = message[0]
                if kind == b"message" or kind == b"smessage":
                    inbox.append(message[2].split(b"\n", 3))
                elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                    # As in _read: on Redis Cluster, the slot's primary became a replica.
                    raise RedisLost(f"Redis ended the subscription to {text(message[1])}")
            if inbox:
                self._drain()
            await raw.fill()
            self._pubsub_heard = loop.time()

    async def _watch(self) -> None:
        """PING through the subscription; a link silent for ``node_timeout`` is lost.

        A subscription whose connection stays open while nothing arrives (a half-open link,
        a NAT that forgot it) would otherwise drop every event for this node's users without
        a word. Losing it is treated like losing Redis: every session is told
        ``shutting_down`` and resumes from history on reconnecting.
        """
        assert self._pubsub is not None
        pubsub = self._pubsub
        loop = asyncio.get_running_loop()
        interval = self.node_timeout / 3
        self._pubsub_heard = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alarm.wait(), interval)
            if self._alarm.is_set():
                raise RedisLost(self._alarm_reason)
            silent = loop.time() - self._pubsub_heard
            if silent > self.node_timeout:
                raise RedisLost(f"nothing arrived on the subscription for {silent:.1f} s")
            await asyncio.wait_for(pubsub.ping(), interval)

    def _drain(self) -> None:
        """Deliver envelopes in channel order, stopping at one whose hold is not released.

        Consecutive envelopes to the same recipient list (a busy room: one socket read
        brings 10 to 20 of them) go out together, one append per recipient session
        (:meth:`_deliver_run`), as the embedded fan-out sends a run of a room's events. A
        membership op, a hold, the end of what was read or another recipient list ends the
        run first, so every session still gets its frames in channel order.
        """
        inbox = self._inbox
        awaiting = self._awaiting
        if self._alarm.is_set():
            return  # starting over: nothing more is acted on
        note_event = self._seen.note_event
        run: list[bytes] = []  # payloads for ``run_to``, not yet delivered
        run_to = b""
        try:
            while inbox:
                hold, op, recipients, payload = inbox[0]
                if hold and hold in awaiting:
                    return
                inbox.popleft()
                if payload:
                    # Any node may have acknowledged it and be gone: this one is a witness too.
                    note_event(payload)
                if op:
                    if run:
                        self._deliver_run(run_to, run)
                        run = []
                    if op[:1] == b"=":  # a barrier (caught_up): all before it is handed over
                        barrier = self._barriers.pop(op[1:], None)
                        if barrier is not None and not barrier.done():
                            barrier.set_result(None)
                        continue
                    if op.startswith(b"reaped "):
                        if op[7:].decode() == self.node_id:
                            # Frozen past the node timeout: the memberships that follow were
                            # taken from this node's users. Start over rather than act on them,
                            # and end the sessions now, in this step: a request read in the
                            # same wake-up as this envelope must not be answered from the
                            # reaped state (``not_in_room`` for a member) before _run would.
                            self._alarm_reason = (
                                "this node was reaped as dead (unresponsive too long)"
                            )
                            self._alarm.set()
                            self._lost(RedisLost(self._alarm_reason))
                            return
                        continue
                    self._apply(op)
                if payload and recipients:
                    if recipients != run_to and run:
                        self._deliver_run(run_to, run)
                        run = []
                    run_to = recipients
                    run.append(payload)
        finally:
            if run:
                self._deliver_run(run_to, run)

    def _apply(self, op: bytes) -> None:
        first, second = op[1:].decode().split(" ")
        if op[:1] == b"!":
            # ``!key ident``: an account took the nick; another identity here under it ends.
            key, ident = first, second
            user = self._users.get(key)
            if user is not None and user.ident != ident:
                del self._users[key]
                self._recipients.clear()
                evict(user)
            return
        room, key = first, second  # ``+room key`` / ``-room key``
        user = self._users.get(key)
        if user is None:
            return
        if op[:1] == b"+":
            user.rooms.add(room)
        else:
            user.rooms.discard(room)

    def _deliver(self, recipients: bytes, frame: bytes) -> None:
        """One envelope's frame to a recipient list's sessions here (as a room's event in
        :meth:`LocalFanout.to_room`)."""
        send_to_runs(self._local_sessions_of(recipients), frame)

    def _deliver_run(self, recipients: bytes, payloads: list[bytes]) -> None:
        """Several envelopes' payloads, in order, to one recipient list: one append per
        session instead of one per frame."""
        if len(payloads) == 1:
            self._deliver(recipients, encode_frame(payloads[0]))
            return
        header = _HEADER
        frames = [header(len(payload)) + payload for payload in payloads]  # encode_frame's
        send_run_to_runs(self._local_sessions_of(recipients), frames, b"".join(frames))

    def _local_sessions_of(self, recipients: bytes) -> Recipients:
        """The sessions on this node of the users a recipient list names (``*``: every
        one), in runs of one class."""
        found = self._recipients.get(recipients)
        if found is None:
            # A busy room sends the same member list again and again: look it up once (until
            # a user or a session arrives or leaves here, which clears these).
            if len(self._recipients) >= RECIPIENT_CACHE:
                self._recipients.clear()
            users = self._users
            if recipients == b"*":
                named: Iterable[User] = users.values()
            else:
                keys = set(recipients.decode().split(" "))
                named = [users[key] for key in keys if key in users]
            found = self._recipients[recipients] = runs_by_class(named)
        return found

    # -- holds -----------------------------------------------------------------------------

    def hold(self, session: Peer) -> str:
        hold = self._holds.get(session)
        if hold is None:
            hold = self._holds[session] = f"{self.node_id}.{next(self._hold_ids)}"
            self._awaiting.add(hold.encode())
        return hold

    def release(self, session: Peer) -> None:
        undelivered = self._undelivered.pop(session, None) if self._undelivered else None
        hold = self._holds.pop(session, None)
        if undelivered is not None:
            dms, queued = undelivered
            if len(dms) < queued and hold is not None and self._registry is not None:
                # The hold stays until every page is sent: what was published after the hello
                # (a live DM among it) waits behind the queue, as it would behind one reply.
                self._registry.spawn(self._page_in(session, dms, queued, hold))
                return
            if self._send_dms(session, dms):
                self._drop_later(session, dms)
        if hold is not None:
            self._awaiting.discard(hold.encode())
            if self._inbox:
                self._drain()

    async def _page_in(self, session: Peer, dms: list[bytes], queued: int, hold: str) -> None:
        """Read and send a long queue page by page, then let this node's events go on.

        Nothing leaves the queue before the last page is read. Other sessions of the identity
        may drop what they were written meanwhile, always the queue's head (it gains nothing
        while the identity is online): each page starts after the last DM sent, wherever that
        is now.
        """
        user = session.user
        assert user is not None
        key = self.keys.pending(user.ident)
        try:
            sent = list(dms)
            alive = self._send_dms(session, dms)
            while alive and len(sent) < queued:
                last = cast(int | None, await self.redis.lpos(key, sent[-1].decode()))
                start = 0 if last is None else last + 1  # None: dropped with all before it
                page = blobs(await self.redis.lrange(key, start, start + PENDING_PAGE - 1))
                if not page:
                    break
                alive = self._send_dms(session, page)
                sent += page
            if alive:
                self._drop_later(session, sent)
        except (RedisError, OSError) as exc:
            # Redis lost: the sessions are being closed; the DMs stay queued for next time.
            log.warning("could not read %s's kept DMs (they stay queued): %s", user.nick, exc)
        finally:
            self._awaiting.discard(hold.encode())
            if self._inbox:
                self._drain()

    def _send_dms(self, session: Peer, dms: list[bytes]) -> bool:
        """Send a session the DMs kept for its identity, before anything published later.

        They leave the queue only once written to a session (rev 2): a session that ends
        first (or is cut as a slow consumer) leaves them for the identity's other sessions'
        or next hello. False when the session has ended (they stay queued).
        """
        user = session.user
        if user is None or session.closing or session not in user.sessions:
            return False  # the session ended during its hello: they stay queued
        for payload in dms:
            session.send(encode_frame(payload))
        return True

    def _drop_later(self, session: Peer, dms: list[bytes]) -> None:
        user = session.user
        if dms and user is not None and self._registry is not None:
            self._registry.spawn(self._drop_when_written(session, user.ident, dms))

    async def _drop_when_written(self, session: Peer, ident: str, dms: list[bytes]) -> None:
        if not await written_to_any([session]):
            return
        # One round trip for the lot (each LREM finds its DM at the head of the queue).
        key = self.keys.pending(ident)
        async with self.redis.pipeline(transaction=False) as pipe:
            for payload in dms:
                pipe.lrem(key, 1, payload.decode())
            await pipe.execute()

    # -- presence --------------------------------------------------------------------------

    def _hold_ms(self, hold: float | None = None) -> int:
        """A guest hold in ms for the scripts: the session's own, else the server's."""
        return max(int((self.guest_hold if hold is None else hold) * 1000), 0)

    def _check_available(self) -> None:
        if not self.available:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server lost its cluster store")

    async def connect(self, session: Peer, nick: str, *, admin: bool, ident: str) -> bool:
        """Returns False: the ``online`` event is published by the script itself.

        Each session reads its identity's undelivered DMs in the same script (so a DM is
        either queued or sent live, never both); they go out at :meth:`release`, after the
        ``welcome`` and before any event published after this.
        """
        self._check_available()
        async with self._gate.shared():
            return await self._connect_session(session, nick, admin=admin, ident=ident)

    async def _connect_session(self, session: Peer, nick: str, *, admin: bool, ident: str) -> bool:
        key = nick.lower()
        try:
            status, online_nick, rooms, dms, queued = await self._connect(
                keys=self._anchor,
                args=[
                    self.keys.prefix,
                    self.keys.channel,
                    self.node_id,
                    key,
                    nick,
                    0,
                    self.hold(session),
                    ident,
                    PENDING_PAGE,
                ],
            )
        except BaseException:
            # It may have run in Redis all the same (a reply lost, the wait cancelled).
            self._records_suspect = True
            raise
        if status == -2:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server lost its cluster store")
        user = self._users.get(key)
        if user is not None and user.ident != ident:
            # An account took the nick of a guest identity online here: that identity ends
            # now and never shares a user with the account (rev 2).
            evict(user)
            del self._users[key]
            user = None
        if user is None:
            user = self._users[key] = User(online_nick.decode(), admin, ident)
            user.rooms.update(room.decode() for room in rooms)
        user.sessions.append(session)
        self._recipients.clear()
        session.user = user
        self._local_sessions += 1
        if dms:
            self._undelivered[session] = (dms, int(queued))
        return False

    async def disconnect(self, session: Peer) -> list[str] | None:
        """Returns None: ``parted``/``offline`` are published by the script itself.

        A disconnect that fails (Redis paused, refusing writes) is undone later by
        :meth:`_reconcile_sessions`, which compares what Redis records with what is here.
        """
        async with self._gate.shared():
            await self._disconnect_session(session)
        return None

    async def _disconnect_session(self, session: Peer) -> None:
        user = session.user
        if user is None or session not in user.sessions:
            return
        user.sessions.remove(session)
        self._recipients.clear()
        self._local_sessions -= 1
        if not user.sessions and self._users.get(user.key) is user:
            del self._users[user.key]
        node = self.node_id
        if not self.available:
            return  # this incarnation's sessions are reaped as a whole
        try:
            await self._disconnect(
                keys=self._anchor,
                args=[
                    self.keys.prefix,
                    self.keys.channel,
                    node,
                    user.key,
                    self._hold_ms(session.guest_hold),
                    user.ident,
                ],
            )
        except BaseException as exc:
            self._records_suspect = True
            if not isinstance(exc, RedisError | OSError):
                raise
            log.warning("could not record that %s left (reconciled later): %s", user.nick, exc)

    async def join(self, session: Peer, room: str) -> bool:
        """Returns False: the ``joined`` event is published by the script itself."""
        user = session.user
        assert user is not None
        await self._join(
            keys=self._anchor,
            args=[
                self.keys.prefix,
                self.keys.channel,
                user.key,
                user.nick,
                room,
                self.hold(session),
            ],
        )
        user.rooms.add(room)
        return False

    async def part(self, session: Peer, room: str) -> bool:
        """Returns False: the ``parted`` event is published by the script itself."""
        user = session.user
        assert user is not None
        was_member = await self._part(
            keys=self._anchor,
            args=[
                self.keys.prefix,
                self.keys.channel,
                user.key,
                user.nick,
                room,
                self.hold(session),
            ],
        )
        user.rooms.discard(room)
        if not was_member:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room}")
        return False

    def is_member(self, user: User, room: str) -> bool:
        return room in user.rooms

    async def members(self, room: str) -> list[str]:
        return texts(await self.redis.hvals(self.keys.members(room)))

    async def member_counts(self, rooms: Sequence[str] | None = None) -> dict[str, int]:
        if rooms is None:
            rooms = texts(await self.redis.smembers(self.keys.rooms))
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hlen(self.keys.members(room))
            counts = await pipe.execute()
        return {room: count for room, count in zip(rooms, counts, strict=True) if count}

    async def online(self) -> list[str]:
        return texts(await self.redis.hvals(self.keys.online))

    def user(self, key: str) -> User | None:
        return self._users.get(key)

    def session_count(self) -> int:
        """This node's sessions (an announcement's count comes from its script instead)."""
        return self._local_sessions

    # -- sending (events the hub publishes itself: topic, pending DMs) ---------------------

    def to_room(self, room: str, frame: bytes) -> None:
        self._queue("room", room, frame[4:])

    def to_users(self, keys: Iterable[str], frame: bytes) -> None:
        self._queue("users", " ".join(set(keys)), frame[4:])

    def to_everyone(self, frame: bytes) -> None:
        self._queue("users", "*", frame[4:])

    async def caught_up(self, timeout: float | None = None) -> bool:
        """Publish a barrier to this node's own channel, after what its outbox holds, and
        wait until it is read back: Redis delivers a subscription in publish order, so
        everything published before it has been handed to the sessions here by then. One
        not yet published is shared. False if it took longer than ``timeout`` (default: the
        node timeout, after which Redis counts as lost and the sessions are closing)."""
        if not self.available:
            return True
        barrier = self._queued_barrier
        if barrier is None:
            token = str(next(self._barrier_ids))
            barrier = asyncio.get_running_loop().create_future()
            self._barriers[token.encode()] = self._queued_barrier = barrier
            self._queue("barrier", token, b"")
        try:
            await asyncio.wait_for(asyncio.shield(barrier), timeout or self.node_timeout)
        except TimeoutError:
            return False
        return True

    def _queue(self, kind: str, target: str, payload: bytes) -> None:
        self._outbox.append((kind, target, payload))
        self._outbox_ready.set()

    async def _publish_loop(self) -> None:
        """One task publishes, in one pipeline per batch: a node's events keep their order."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            await self._publish_outbox()

    async def _publish_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            self._queued_barrier = None  # published now: a later caller needs its own
            commands = [self._publish_command(*item) for item in batch]
            for result in await run_pipeline(self.redis, commands, [self._to_room, self._to_users]):
                if isinstance(result, ResponseError):
                    # Redis answers but refuses (read-only, out of memory): this event is
                    # lost, the node and its sessions are not.
                    log.warning("Redis refused to publish an event: %s", result)
                elif isinstance(result, Exception):
                    raise result

    def _publish_command(self, kind: str, target: str, payload: bytes) -> Callable[[Any], Any]:
        keys = self.keys
        publish = "SPUBLISH" if self.store.sharded else "PUBLISH"
        if kind == "barrier":  # to this node alone, no recipients: see caught_up
            barrier = b"\n=" + target.encode() + b"\n\n"
            channel = keys.node_channel(self.node_id)
            return lambda pipe: pipe.execute_command(publish, channel, barrier)
        if kind == "room":
            room = self._to_room
            return lambda pipe: pipe.evalsha(
                room.sha, 1, keys.anchor, keys.prefix, keys.channel, target, payload
            )
        if target != "*":
            users = self._to_users
            return lambda pipe: pipe.evalsha(
                users.sha, 1, keys.anchor, keys.prefix, keys.channel, payload, *target.split(" ")
            )
        envelope = b"\n\n*\n" + payload
        return lambda pipe: pipe.execute_command(publish, keys.channel, envelope)

    # -- node liveness ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Refresh the heartbeat, reconcile this node's sessions, reap dead nodes.

        A Redis that answers but refuses writes (read-only, out of memory) or stalls does not
        end the node: sessions stay, writes are answered ``internal``, and all of this
        resumes when Redis does. Only a reaped node starts over (a dead link is noticed by
        :meth:`_watch`).
        """
        loop = asyncio.get_running_loop()
        interval = self.node_timeout / 3
        ttl_ms = int(self.node_timeout * 1000)
        failing_since: float | None = None
        reported = False
        while not self._closing:
            try:
                alive = await self._heartbeat(
                    keys=self._anchor, args=[self.keys.prefix, self.node_id, ttl_ms]
                )
                if not alive:
                    raise RedisLost(f"node {self.node_id} was reaped as dead")
                changed = await self.store.epoch_changed()
                if changed is not None:
                    raise EpochChanged(f"the store's epoch changed to {changed}")
                if self._healthy_since is None:
                    self._healthy_since = loop.time()
                await self._reconcile_sessions()
                # A node whose own heartbeats failed lately may be looking at heartbeats that
                # expired for the same reason (Redis refused everyone's): reap only after a
                # whole node timeout of our own successes.
                if loop.time() - self._healthy_since >= self.node_timeout:
                    await self._reap_dead()
                if failing_since is not None:
                    log.warning("Redis accepts this node's writes again")
                    failing_since, reported = None, False
            except (RedisError, OSError) as exc:
                self._healthy_since = None
                if failing_since is None:
                    log.warning("cannot refresh this node's heartbeat (retrying): %s", exc)
                    failing_since = loop.time()
                elif not reported and loop.time() - failing_since > self.node_timeout:
                    log.warning(
                        "Redis has refused this node's writes for %.0f s; sessions stay, "
                        "writes are answered internal until it recovers",
                        loop.time() - failing_since,
                    )
                    reported = True
            await asyncio.sleep(interval)

    async def _reconcile_sessions(self) -> None:
        """Let go of sessions Redis still records for this node but that are gone here.

        A disconnect whose script failed leaves its user online (and a member) in Redis: a
        ghost whose nick nobody can take (a connect whose reply was lost, the same). The
        heartbeat after such a failure compares the records with the sessions here, so a
        ghost outlives Redis's recovery by at most one heartbeat interval. Only then: the
        records of 16,667 users took 24-28 ms of the loop's CPU to read (30-36 ms of wall time),
        each heartbeat.
        """
        if not self._records_suspect:
            return
        self._records_suspect = False  # a failure from now on is looked at next time
        try:
            await self._reconcile_records()
        except BaseException:
            self._records_suspect = True
            raise

    async def _reconcile_records(self) -> None:
        reply = await self.redis.hgetall(self.keys.node_users(self.node_id))
        recorded = {text(key): int(n) for key, n in reply.items()}
        if not any(n > self._session_count(key) for key, n in recorded.items()):
            return
        async with self._gate.exclusive():
            args: list[str | int] = [
                self.keys.prefix,
                self.keys.channel,
                self.node_id,
                self._hold_ms(),
            ]
            for key, n in recorded.items():
                if n > self._session_count(key):
                    args += [key, self._session_count(key)]
            left = await self._reconcile(keys=self._anchor, args=args)
        if left:
            log.warning("%d users whose disconnect had failed went offline", left)

    def _session_count(self, key: str) -> int:
        user = self._users.get(key)
        return len(user.sessions) if user is not None else 0

    async def _reap_dead(self) -> None:
        nodes = texts(await self.redis.smembers(self.keys.nodes))
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for node in others:
                pipe.exists(self.keys.node(node))
            alive = await pipe.execute()
        for node, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                left = await self._reap(
                    keys=self._anchor,
                    args=[self.keys.prefix, self.keys.channel, node, self._hold_ms()],
                )
                if left >= 0:
                    log.warning("reaped dead node %s (%d users went offline)", node, left)
