"""The clustered store: every server process shares users, rooms and history in one Redis.

Messages are stored by one Lua script that, atomically, checks the ``cid``, takes the next
``seq``, stores the event, and PUBLISHes it to the nodes hosting its recipients (so publish
order is seq order and a message can never be seen without being stored). An ``ok`` follows
the script's reply, so it is sent only once Redis holds the message; how durable that is
depends on Redis's own persistence (``docs/redis.md``).

Key layout (``P`` is the prefix, ``imchat:`` by default)::

    P epoch             string the store's epoch, created with SET NX by the first node,
                               replaced when Redis lost writes (imchat.server.redis_epoch)
    P user:<key>        hash   nick, created, account (0/1), admin (0/1), password_hash,
                               ident (the account's identity id; absent: the nick key);
                               none for a guest (a stranger's new nicks must not pile up)
    P guest:<key>       hash   ident, nick, resume (hash) of the guest identity holding the
                               nick; no TTL while online, the hold as TTL while held
    P accounts          set    keys that have an account
    P credentials       string a counter moved on by every account, password or token change
                               that can end a logged-in session (the re-check's cue)
    P token:<hash>      hash   user, label, created
    P tokens            zset   token hashes by creation time
    P room:<name>       hash   topic, created
    P rooms             set    room names
    P seq               hash   stream -> last seq
    P m:<stream>        zset   the stream's event payloads, scored by seq
    P by:<stream>       hash   seq -> the identity that wrote it (edits and deletes check it)
    P cid:<ident>       hash   cid -> "<stream>\\n<seq>\\n<ts>" (per account or guest identity)
    P since:<ident>     hash   DM stream -> first seq the identity may read
    P pending:<ident>   list   payloads of DMs to deliver at the identity's next hello (a
                               held guest's expires with its hold)
    P pendingby:<ident> hash   sender (Draft.queue_source: a guest's address, an account)
                               -> DMs it queued there (grows; void once the queue has
                               emptied): ``max_queued_per_sender``
    P hook:<hash>       hash   a webhook (imchat.server.hookstore): kind, room, user, ...
    P hooks             zset   webhook token hashes by creation time
    P events            pub/sub channel every node hears (see redis_fanout)
    P ev:<node>         pub/sub channel of one node: envelopes for its users only

Presence keys are described in :mod:`imchat.server.redis_fanout`. Scripts build key names
from the prefix and declare one key (``P seq``); on Redis Cluster the prefix is a hash tag, so
every key is in that key's slot, on one shard (:mod:`imchat.server.redis_shard`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError, RedisError
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    from hiredis import pack_command as _hiredis_pack

from imchat.protocol import ErrorCode, ProtocolError

from . import features_redis
from .hookstore import Hook
from .message_features import SearchResult, SearchScope
from .redis_epoch import SeenSeqs, verify_epoch
from .redis_raw import RawLink, raw_execute
from .redis_shard import ShardConnection, ShardSSLConnection, prefix_slot, tagged_prefix
from .redis_typed import blobs, lrem, text, texts
from .redis_url import parse_cluster_url, parse_sentinel_url
from .stats import STATS
from .store import (
    TOKEN_ID_LENGTH,
    Account,
    ClaimStatus,
    Draft,
    GuestClaim,
    Identity,
    RoomInfo,
    Stored,
    StoreUnavailable,
    TokenInfo,
    UserRecord,
    new_epoch,
    new_ident,
    share_refusal,
    token_id,
)
from .streams import StreamId

log = logging.getLogger(__name__)

#: How long an append waits for ``--redis-wait`` replicas before it is answered ``internal``.
WAIT_TIMEOUT_MS = 1000

DEFAULT_PREFIX = "imchat:"
#: Seconds a guest identity claimed by a hello is kept at least until its session is counted
#: online (a short ``guest_hold`` must not free the nick in between).
CLAIM_GRACE = 60.0
#: Messages read per step while pruning by age.
PRUNE_PAGE = 500
#: Commands sent in one pipeline at most.
MAX_BATCH = 512


class _Stamped(msgspec.Struct):
    ts: float = 0.0


_stamp_decoder = msgspec.json.Decoder(_Stamped)


def _ts_of(payload: bytes) -> float:
    return _stamp_decoder.decode(payload).ts


class RedisUnavailable(StoreUnavailable):
    """Redis did not answer at start."""


def pack_in_c(redis: aioredis.Redis) -> aioredis.Redis:
    """Let the client's connections pack commands with hiredis, when it is installed.

    redis-py's asyncio connections pack every argument in Python (its sync ones use
    hiredis): an append's EVALSHA has 13 arguments, and packing them was the largest single
    cost of a node's say path (about an eighth of its CPU under load).
    """
    if not HIREDIS_AVAILABLE:
        return redis
    pool = redis.connection_pool
    base = pool.connection_class
    if not issubclass(base, CPacked):
        pool.connection_class = type(f"CPacked{base.__name__}", (CPacked, base), {})
    return redis


class CPacked(Connection):
    """A connection mixin: commands packed by ``hiredis.pack_command``.

    A command named by one word (all of imchat's hot ones) goes to hiredis as it is: redis-py's
    serializer first splits the name and copies every argument through a generator, which cost
    as much as the packing itself. Anything else (``SCRIPT LOAD``, a type hiredis refuses)
    takes the serializer's path, as before. A batch becomes one buffer.
    """

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                return [_hiredis_pack(args)]
            except TypeError:
                pass
        packed: list[bytes] = self._packer.pack(*args)
        return packed

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        # pack_command inlined for the usual command (a tuple named by one word): a batch of
        # appends packs each with one call.
        out: list[bytes] = []
        for command in commands:
            if type(command) is tuple:
                name = command[0]
                if type(name) is str and " " not in name:
                    try:
                        out.append(_hiredis_pack(command))
                        continue
                    except TypeError:
                        pass
            out.append(b"".join(self.pack_command(*command)))
        return [b"".join(out)]


#: Connections a client opens to Redis at most; a command beyond them waits up to
#: :data:`POOL_WAIT` seconds for one to come free. redis-py's default pool (100, then
#: ``MaxConnectionsError`` at once) failed hellos as ``internal`` during connect bursts.
POOL_SIZE = 128
POOL_WAIT = 5.0


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel-aware pool, waiting for a free connection as the others do."""


def connect_redis(
    url: str, *, blocking: bool = False, prefix: str = DEFAULT_PREFIX
) -> aioredis.Redis:
    """A client that never retries a command on its own.

    A retried script could store a message twice (one without ``cid``): a failed command
    must reach the hub, which answers ``internal`` and never ``ok``. ``blocking`` clients
    (pub/sub) have no read timeout, since they wait for messages indefinitely. At most
    :data:`POOL_SIZE` connections; more commands at once wait for one (up to
    :data:`POOL_WAIT` seconds, then fail like any lost command).
    """
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": 3.0,
        "socket_timeout": None if blocking else 5.0,
        "health_check_interval": 0,
        "max_connections": POOL_SIZE,
        "timeout": POOL_WAIT,
    }
    cluster = parse_cluster_url(url)
    if cluster is not None:
        # One plain connection class that finds the primary of imchat's slot (redis_shard).
        pool = aioredis.BlockingConnectionPool(
            connection_class=ShardSSLConnection if cluster.tls else ShardConnection,
            cluster=cluster,
            slot=prefix_slot(tagged_prefix(prefix)),
            password=cluster.password,
            **options,
        )
        return pack_in_c(aioredis.Redis.from_pool(pool))
    target = parse_sentinel_url(url)
    if target is None:
        return pack_in_c(
            aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **options))
        )
    # Every new connection asks the Sentinels for the current primary: after a failover the
    # node's reconnect (it drops its pool when it loses Redis) lands on the new one.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.sentinels),
        sentinel_kwargs={"socket_connect_timeout": 3.0, "socket_timeout": 3.0},
        ssl=target.tls,
    )
    redis: aioredis.Redis = sentinel.master_for(
        target.service,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        password=target.password,
        ssl=target.tls,
        **options,
    )
    return pack_in_c(redis)


#: Shared by the Lua scripts: Redis's clock as a JSON number of Unix seconds, ms precision,
#: and routed publishing (see ``redis_fanout``): an envelope goes only to the channels of the
#: nodes hosting a recipient, ``P ev:<node>``, listing that node's recipients alone.
#: ``P where:<key>`` (node -> sessions there) says where a user is; ``P rnodes:<room>`` (the
#: nodes hosting a member) and ``P rn:<node>:<room>`` (the members with a session there) say
#: where a room's members are, and ``P rs:<node>:<room>`` holds that set as one string (each
#: key followed by a space), so a room message reads one string per node, not one key per
#: member. ``PUB`` becomes ``SPUBLISH`` on Redis Cluster (:func:`lua_for`).
LUA_PRELUDE = """
local PUB = 'PUBLISH'
local function now_ts()
  local t = redis.call('TIME')
  local ms = math.floor(tonumber(t[2]) / 1000)
  if ms == 0 then return t[1] end
  local s = string.format('%s.%03d', t[1], ms)
  s = string.gsub(s, '0+$', '')
  return s
end
local function envelope(hold, op, recipients, payload)
  return hold .. '\\n' .. op .. '\\n' .. recipients .. '\\n' .. payload
end
-- Recipients by node: add the room's members (as routed now) to `by` (node -> keys). Each
-- node's are kept ready as one string (`rs:`), so a message does not build it member by
-- member.
local function group_room(prefix, room, by, order)
  for _, node in ipairs(redis.call('SMEMBERS', prefix .. 'rnodes:' .. room)) do
    local keys = redis.call('GET', prefix .. 'rs:' .. node .. ':' .. room)
    if keys then
      local list = by[node]
      if not list then by[node] = {keys}; table.insert(order, node)
      else table.insert(list, keys) end
    end
  end
end
-- Recipients by node: add users by key, on every node that has a session of theirs.
local function group_keys(prefix, keys, by, order)
  for _, k in ipairs(keys) do
    for _, node in ipairs(redis.call('HKEYS', prefix .. 'where:' .. k)) do
      local list = by[node]
      if not list then list = {}; by[node] = list; table.insert(order, node) end
      table.insert(list, k)
    end
  end
end
-- One envelope per node, naming that node's recipients (a node dedupes a repeated key).
local function flush(prefix, by, order, hold, op, payload)
  for _, node in ipairs(order) do
    redis.call(PUB, prefix .. 'ev:' .. node,
      envelope(hold, op, table.concat(by[node], ' '), payload))
  end
end
local function to_node(prefix, node, env)
  redis.call(PUB, prefix .. 'ev:' .. node, env)
end
local function to_all(prefix, env)
  redis.call(PUB, prefix .. 'events', env)
end
"""


def lua_for(script: str, *, sharded: bool) -> str:
    """A script as this deployment runs it: Redis Cluster publishes on shard channels."""
    if not sharded:
        return script
    return script.replace("local PUB = 'PUBLISH'", "local PUB = 'SPUBLISH'")


#: ARGV: prefix, stream, cid or '', event JSON without its closing brace, hold, sender key,
#: owner (sender identity id: the cid namespace), recipient identity id (DMs),
#: "<max_queued> <max_queued_per_sender> <queue_source>" (one argument: the feature scripts
#: number theirs from 11; an empty source is the sender key),
#: '1' if the sender must be a member of the room ('0' for a detached HTTP poster).
#: Keys are derived from the prefix (few arguments: packing them is the client's main cost).
#: Returns one string, "<status> <seq> <ts> <delivered>\n<payload>" (one bulk reply parses
#: much faster than an array): status 1 stored, 0 duplicate cid, -1 not a member, -2 the
#: recipient's queue is full, -3 the sender's share of it is used up; delivered is the
#: cluster's session count for an announcement.
APPEND_LUA = (
    LUA_PRELUDE
    + """
local prefix, stream, cid, body, hold, sender = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local owner, to_ident = ARGV[7], ARGV[8]
local max_queued, share, source = string.match(ARGV[9], '^(%d+) (%d+) ?(.*)$')
max_queued, share = tonumber(max_queued), tonumber(share)
if source == '' then source = sender end
local as_member = ARGV[10] ~= '0'
local kind = string.sub(stream, 1, 1)
local cids = prefix .. 'cid:' .. owner
if cid ~= '' then
  local prev = redis.call('HGET', cids, cid)
  if prev then
    local pstream, pseq, pts = string.match(prev, '^(.-)\\n(%d+)\\n(.*)$')
    local found = redis.call('ZRANGEBYSCORE', prefix .. 'm:' .. pstream, pseq, pseq)
    return '0 ' .. pseq .. ' ' .. pts .. ' 0\\n' .. (found[1] or '')
  end
end
local members
local to, to_online
if kind == 'r' then
  members = prefix .. 'members:' .. string.sub(stream, 3)
  if as_member and redis.call('HEXISTS', members, sender) == 0 then return '-1 0 0 0\\n' end
elseif kind == 'd' then
  local low, high = string.match(stream, '^d:(%S+) (%S+)$')
  to = low
  if low == sender then to = high end
  to_online = tonumber(redis.call('HGET', prefix .. 'sessions', to) or '0') > 0
  if to ~= sender and not to_online then
    local queue = prefix .. 'pending:' .. to_ident
    local queued = redis.call('LLEN', queue)
    if max_queued > 0 and queued >= max_queued then return '-2 0 0 0\\n' end
    if share > 0 then
      -- The sender's share. The counts only grow, and are void once the queue has
      -- emptied (every DM delivered): exact for a queue delivered whole, as a hello does,
      -- and O(1) where counting the queue would read up to max_queued payloads.
      local shares = prefix .. 'pendingby:' .. to_ident
      if queued == 0 then redis.call('DEL', shares)
      elseif tonumber(redis.call('HGET', shares, source) or '0') >= share then
        return '-3 0 0 0\\n'
      end
    end
  end
end
local seq = redis.call('HINCRBY', prefix .. 'seq', stream, 1)
local ts = now_ts()
local payload = body .. ',"seq":' .. seq .. ',"ts":' .. ts .. '}'
redis.call('ZADD', prefix .. 'm:' .. stream, seq, payload)
-- Who wrote it, as an identity: edits and deletes check it (a later guest with the same
-- nick is another identity and owns none of these messages).
redis.call('HSET', prefix .. 'by:' .. stream, seq, owner)
if cid ~= '' then
  redis.call('HSET', cids, cid, stream .. '\\n' .. seq .. '\\n' .. ts)
end
local delivered = 0
if kind == 'r' then
  local by, order = {}, {}
  group_room(prefix, string.sub(stream, 3), by, order)
  flush(prefix, by, order, hold, '', payload)
elseif kind == 'd' then
  redis.call('HSETNX', prefix .. 'since:' .. owner, stream, seq)
  local to_ttl = redis.call('PTTL', prefix .. 'guest:' .. to)
  local to_held = to_ttl > 0 and redis.call('HGET', prefix .. 'guest:' .. to, 'ident') == to_ident
  if to_ident ~= '' then
    redis.call('HSETNX', prefix .. 'since:' .. to_ident, stream, seq)
    -- a held guest's keys end with its hold
    if to_held then redis.call('PEXPIRE', prefix .. 'since:' .. to_ident, to_ttl) end
  end
  local audience = {sender}
  if to ~= sender then
    if to_online then
      table.insert(audience, to)
    else
      local queue = prefix .. 'pending:' .. to_ident
      redis.call('RPUSH', queue, payload)
      if to_held then redis.call('PEXPIRE', queue, to_ttl) end  -- dropped when the hold ends
      if share > 0 then
        local shares = prefix .. 'pendingby:' .. to_ident
        redis.call('HINCRBY', shares, source, 1)
        if to_held then redis.call('PEXPIRE', shares, to_ttl) end
      end
    end
  end
  local by, order = {}, {}
  group_keys(prefix, audience, by, order)
  flush(prefix, by, order, hold, '', payload)
else
  delivered = tonumber(redis.call('GET', prefix .. 'nsessions') or '0')
  to_all(prefix, envelope(hold, '', '*', payload))
end
return '1 ' .. seq .. ' ' .. ts .. ' ' .. delivered .. '\\n' .. payload
"""
)

#: ARGV: prefix, key, nick, resume hash or '', new ident, new resume hash, a resumed claim's
#: expiry ms (the hold), a new claim's expiry ms (the grace until its session is counted).
#: Returns {status, ident, nick} or {'taken', pttl} (see Store.claim_guest).
CLAIM_GUEST_LUA = """
local prefix, key, nick, resume = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local user = prefix .. 'user:' .. key
if redis.call('HGET', user, 'account') == '1' then return {'account'} end
local guest = prefix .. 'guest:' .. key
local cur = redis.call('HMGET', guest, 'ident', 'resume', 'nick')
if cur[1] then
  local ttl = redis.call('PTTL', guest)
  if resume == '' or cur[2] ~= resume then return {'taken', tostring(ttl)} end
  if ttl >= 0 then redis.call('PEXPIRE', guest, ARGV[7]) end
  return {'resumed', cur[1], cur[3]}
end
redis.call('HSET', guest, 'ident', ARGV[5], 'nick', nick, 'resume', ARGV[6])
redis.call('PEXPIRE', guest, ARGV[8])
return {'new', ARGV[5], nick}
"""

#: ARGV: prefix, key, ident. Ends a guest identity a hello claimed but whose session was
#: never counted online (its welcome never went out, so nobody has its resume); 1 if it did.
RELEASE_CLAIM_LUA = """
local prefix, key, ident = ARGV[1], ARGV[2], ARGV[3]
local guest = prefix .. 'guest:' .. key
if redis.call('HGET', guest, 'ident') ~= ident then return 0 end
if redis.call('HGET', prefix .. 'identof', key) == ident then return 0 end  -- online after all
redis.call('DEL', guest, prefix .. 'pending:' .. ident, prefix .. 'since:' .. ident,
  prefix .. 'cid:' .. ident, prefix .. 'markers:' .. ident, prefix .. 'pendingby:' .. ident)
return 1
"""

#: ARGV: prefix, key, new account ident, nick, admin, password hash or ''. Creates (or
#: replaces) an account and ends the guest identity holding the nick, with its queue.
CREATE_ACCOUNT_LUA = """
local prefix, key = ARGV[1], ARGV[2]
local guest = prefix .. 'guest:' .. key
local old = redis.call('HGET', guest, 'ident')
if old then
  redis.call('DEL', prefix .. 'pending:' .. old, prefix .. 'markers:' .. old,
    prefix .. 'pendingby:' .. old)
end
redis.call('DEL', guest)
local user = prefix .. 'user:' .. key
redis.call('HSET', user, 'nick', ARGV[4], 'account', 1, 'admin', ARGV[5], 'ident', ARGV[3])
redis.call('HSETNX', user, 'created', ARGV[7])
if ARGV[6] == '' then redis.call('HDEL', user, 'password_hash')
else redis.call('HSET', user, 'password_hash', ARGV[6]) end
redis.call('SADD', prefix .. 'accounts', key)
redis.call('INCR', prefix .. 'credentials')
return 1
"""


class ReplicationTimeout(RedisError):
    """Fewer replicas than ``--redis-wait`` confirmed a write in time: its fate is unknown."""


async def run_pipeline(
    redis: aioredis.Redis,
    commands: list[Callable[[Pipeline], Any]],
    scripts: list[Any],
    *,
    wait: tuple[int, int] | None = None,
    link: RawLink | None = None,
) -> list[Any]:
    """Run commands in one pipeline, in order; results (or exceptions) in the same order.

    Scripts are sent as bare EVALSHA: redis-py's pipeline would check them with an extra
    ``SCRIPT EXISTS`` round trip per batch. Only after a Redis restart (scripts flushed) do
    some fail with NOSCRIPT; those did not run, so they are loaded and run again, in order.

    ``wait`` (replicas, timeout in ms) ends each pipeline with ``WAIT``, on the same
    connection as the writes it covers; the fewest replicas it confirmed is appended to the
    results. ``link``: send over that connection instead of one from the pool.
    """

    async def execute(indices: list[int]) -> tuple[list[Any], int | None]:
        async with redis.pipeline(transaction=False) as pipe:
            for i in indices:
                commands[i](pipe)
            if wait is not None:
                pipe.execute_command("WAIT", *wait)
            stack = pipe.command_stack
            results: list[Any] | None = await (
                raw_execute(redis, stack) if link is None else link.execute(stack)
            )
            if results is None:
                results = await pipe.execute(raise_on_error=False)
        if wait is None:
            return results, None
        acked = results.pop()
        return results, acked if isinstance(acked, int) else 0

    results = await _reloading(redis, scripts, execute, len(commands))
    assert results is not None  # the pipeline always sends
    return results


def _packed_wait(wait: tuple[int, int]) -> bytes:
    """``WAIT`` for ``--redis-wait``'s replicas (and its timeout in ms), packed."""
    return pack_args(("WAIT", *wait))


async def run_packed(
    redis: aioredis.Redis,
    link: RawLink,
    packed: list[bytes],
    scripts: list[Any],
    *,
    wait: tuple[int, int] | None = None,
) -> list[Any] | None:
    """:func:`run_pipeline` for commands packed already (:func:`pack_args`) whose replies
    need no response callback (scripts): no redis-py pipeline made, nothing packed again.
    None: nothing was sent (the link cannot take a raw batch; use :func:`run_pipeline`)."""
    waiting = _packed_wait(wait) if wait is not None else None

    async def execute(indices: list[int]) -> tuple[list[Any], int | None] | None:
        batch = [packed[i] for i in indices]
        if waiting is not None:
            batch.append(waiting)
        results = await link.execute_packed(batch)
        if results is None:
            return None
        if waiting is None:
            return results, None
        acked = results.pop()
        return results, acked if isinstance(acked, int) else 0

    return await _reloading(redis, scripts, execute, len(packed))


async def _reloading(
    redis: aioredis.Redis,
    scripts: list[Any],
    execute: Callable[[list[int]], Awaitable[tuple[list[Any], int | None] | None]],
    count: int,
) -> list[Any] | None:
    """Run ``count`` commands with ``execute`` (results and the fewest replicas a ``WAIT``
    confirmed, or None if nothing was sent); those that failed with NOSCRIPT (Redis
    restarted and flushed its scripts: they did not run) again, in order, once the scripts
    are loaded. The results in order, the replicas appended when waited for."""
    first = await execute(list(range(count)))
    if first is None:
        return None
    results, acked = first
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in scripts:
            script.sha = await redis.script_load(script.script)
        again = await execute(missing)
        if again is None:
            raise RuntimeError("a batch could not be sent again on its link")
        rerun, rerun_acked = again
        for i, result in zip(missing, rerun, strict=True):
            results[i] = result
        if acked is not None and rerun_acked is not None:
            acked = min(acked, rerun_acked)
    if acked is not None:
        results.append(acked)
    return results


def pack_args(args: Iterable[str | bytes | int]) -> bytes:
    """A command as RESP (what ``hiredis.pack_command`` makes), from str, bytes or int."""
    parts = [b""]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    parts[0] = b"*%d\r\n" % (len(parts) - 1)
    return b"".join(parts)


class Keys:
    """The key names Python code uses, under one prefix.

    Keys only the Lua scripts touch (``cid:``, ``urooms:``, ``nodeusers:``, ``sessions``,
    ``nsessions``) are built inside the scripts; the module docstrings list them all.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.accounts = f"{prefix}accounts"
        self.tokens = f"{prefix}tokens"
        self.rooms = f"{prefix}rooms"
        self.seq = f"{prefix}seq"
        #: The channel every node hears (announcements, ``*`` envelopes).
        self.channel = f"{prefix}events"
        # Presence (maintained by RedisFanout; the append script reads them).
        self.online = f"{prefix}online"
        self.nodes = f"{prefix}nodes"
        self.epoch = f"{prefix}epoch"
        #: Moved on by every change that can end a logged-in session (see
        #: :meth:`RedisStore.credentials_version`).
        self.credentials = f"{prefix}credentials"
        #: The key every script declares (KEYS[1]; the others it builds from the prefix):
        #: on Redis Cluster it says which shard runs the script, and all keys share its slot.
        self.anchor = self.seq

    def user(self, key: str) -> str:
        return f"{self.prefix}user:{key}"

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}token:{token_hash}"

    def room(self, name: str) -> str:
        return f"{self.prefix}room:{name}"

    def messages(self, stream: str) -> str:
        return f"{self.prefix}m:{stream}"

    def cids(self, ident: str) -> str:
        return f"{self.prefix}cid:{ident}"

    def pending(self, ident: str) -> str:
        return f"{self.prefix}pending:{ident}"

    def guest(self, key: str) -> str:
        return f"{self.prefix}guest:{key}"

    def since(self, ident: str) -> str:
        return f"{self.prefix}since:{ident}"

    def members(self, room: str) -> str:
        return f"{self.prefix}members:{room}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_users(self, node_id: str) -> str:
        return f"{self.prefix}nodeusers:{node_id}"

    def node_channel(self, node_id: str) -> str:
        """The pub/sub channel of one node: envelopes for its sessions' users alone."""
        return f"{self.prefix}ev:{node_id}"


class _AppendGroup:
    """A session's consecutive appends on the ordered pipeline (:meth:`RedisStore.queue_append`):
    one future for them all, settled with every outcome in order (a refusal or a failure an
    exception in its place) once the last one's reply is in.

    Open (taking more appends) until anything else is queued (another session's append, any
    other command) or the ordered pipeline takes its next batch; its size is fixed from
    then on.
    """

    __slots__ = ("future", "open", "outcomes", "owner", "size")

    def __init__(self, owner: object, future: asyncio.Future[list[Any]]) -> None:
        self.owner = owner
        self.future = future
        self.size = 0
        self.open = True
        self.outcomes: list[Any] = []

    def take(self, result: Any, then: Callable[[Any], Any] | None) -> None:
        """One member's result, in queue order: its outcome noted, the group settled at the
        last (unless its one waiter was cancelled meanwhile)."""
        if isinstance(result, BaseException) or then is None:
            outcome = result
        else:
            try:
                outcome = then(result)
            except Exception as exc:  # a refusal (ProtocolError) or a bug
                outcome = exc
        outcomes = self.outcomes
        outcomes.append(outcome)
        if len(outcomes) >= self.size and not self.open and not self.future.done():
            self.future.set_result(outcomes)


#: A command on the ordered pipeline: how to add it to a pipeline, the future its result
#: settles (or the group of appends it belongs to), whether it writes (``--redis-wait``
#: covers it), what turns the reply into that result (None: the reply itself), and the
#: command packed already (None: not packed; a batch of packed commands goes to Redis
#: without a redis-py pipeline, see ``run_packed``).
Batched = tuple[
    Callable[[Pipeline], Any],
    asyncio.Future[Any] | _AppendGroup,
    bool,
    Callable[[Any], Any] | None,
    bytes | None,
]
#: Streams, and senders, whose part of a packed append is kept (see ``_packed_append``).
PACKED_CACHE = 1024


class RedisStore:
    """:class:`imchat.server.store.Store` in Redis, shared by every node of a cluster.

    Only with :class:`imchat.server.redis_fanout.RedisFanout`: messages are delivered by
    publishing them (``Stored.published``), and room membership lives in Redis.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, wait_replicas: int = 0) -> None:
        self.url = url
        #: Redis Cluster: every key under one hash tag, published on shard channels.
        self.sharded = parse_cluster_url(url) is not None
        self.keys = Keys(tagged_prefix(prefix) if self.sharded else prefix)
        #: ``--redis-wait``: an append is acknowledged only once this many replicas have it.
        self.wait_replicas = wait_replicas
        self.redis = connect_redis(url, prefix=self.keys.prefix)
        append_lua = lua_for(APPEND_LUA, sharded=self.sharded)
        self._append = self.redis.register_script(append_lua)
        # Revision 3 (features_redis): the append script wrapped with target checks.
        self.feature_lua = self.redis.register_script(features_redis.feature_script(append_lua))
        self.mark_lua = self.redis.register_script(features_redis.MARK_LUA)
        self._claim_guest = self.redis.register_script(CLAIM_GUEST_LUA)
        self._release_claim = self.redis.register_script(RELEASE_CLAIM_LUA)
        #: Guest identities this node's hellos began within the claim grace: identity id ->
        #: (user key, monotonic time of the claim), oldest first.
        self._claimed: dict[str, tuple[str, float]] = {}
        self._create_account = self.redis.register_script(CREATE_ACCOUNT_LUA)
        self._epoch: str | None = None
        #: The newest message this node acknowledged or delivered per stream (issue 13).
        self.seen = SeenSeqs()
        self._encoder = msgspec.json.Encoder()
        #: Commands for the ordered pipeline: each with its future, whether it writes and
        #: what turns its reply into the future's result (None: the reply itself).
        self._queue: list[Batched] = []
        self._queued = asyncio.Event()
        #: The group :meth:`queue_append` adds to (None: the next append starts one).
        self._group: _AppendGroup | None = None
        self._sender: asyncio.Task[None] | None = None
        #: The ordered pipeline's own connection (one batch at a time).
        self._link = RawLink(self.redis)
        #: The loop the store is used from (set by open, or at the first ordered command).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The parts of an append's packed ``EVALSHA`` that repeat: up to the stream (by
        #: stream key), and after the hold (by sender and queue limits); see _packed_append.
        self._packed_heads: dict[str, bytes] = {}
        self._packed_tails: dict[tuple[str, str, str, int, int, str, bool], bytes] = {}
        self._packed_sha = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            raise RedisUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        # The first node of a new store names its epoch; every other node reads that one.
        await self.redis.set(self.keys.epoch, new_epoch(), nx=True)
        self._epoch = text(await self.redis.get(self.keys.epoch))
        self._sender = asyncio.create_task(self._send_batches())
        await features_redis.migrate(self)

    async def close(self) -> None:
        if self._sender is not None:
            deadline = asyncio.get_running_loop().time() + 5.0
            while self._queue and not self._sender.done():
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)  # the last batch is on its way
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._link.close()
        await self.redis.aclose()

    def _ordered(
        self,
        command: Callable[[Pipeline], Any],
        *,
        write: bool = False,
        then: Callable[[Any], Any] | None = None,
        packed: bytes | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one command for the ordered pipeline; its result resolves the future.

        Appends and user lookups go through one connection in call order (results resolve in
        that order too): the hub starts a session's pipelined say/dm requests in order, and
        this keeps their seqs in that order. It also batches them, one round trip for many.
        ``then`` turns the reply into the future's result (what it raises, the future's
        exception) without a task of its own. ``packed``: the same command as RESP, for a
        script whose reply needs no response callback (a batch of only those is sent as
        it is).
        """
        loop = self._loop
        if loop is None:  # asked once: get_running_loop costs a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        group = self._group
        if group is not None:  # queued after the group: its size is known now
            group.open = False
            self._group = None
        self._queue.append((command, future, write, then, packed))
        self._queued.set()
        return future

    async def _send_batches(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                group, self._group = self._group, None
                if group is not None:  # its size is known now: what follows starts another
                    group.open = False
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                started = time.perf_counter()
                try:
                    results = await self._run_batch(batch)
                    STATS.commit_seconds.observe(time.perf_counter() - started)
                except Exception as exc:  # every waiter must hear of it, whatever it was
                    log.error("Redis failed a batch of %d commands: %s", len(batch), exc)
                    results = [exc] * len(batch)
                for (_, future, _, then, _), result in zip(batch, results, strict=True):
                    if isinstance(future, _AppendGroup):
                        future.take(result, then)
                        continue
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    elif then is None:
                        future.set_result(result)
                    else:
                        try:
                            future.set_result(then(result))
                        except Exception as exc:  # a refusal (ProtocolError) or a bug
                            future.set_exception(exc)

    async def _run_batch(self, batch: list[Batched]) -> list[Any]:
        wait = None
        if self.wait_replicas and any(write for _, _, write, _, _ in batch):
            wait = (self.wait_replicas, WAIT_TIMEOUT_MS)
        results = None
        # Every script a batch may run: after NOSCRIPT each is loaded and the commands that
        # did not run are run again within the batch, so none loses its place in the order.
        scripts = [self._append, self.feature_lua]
        packed = [command for _, _, _, _, command in batch]
        if None not in packed and self._link.usable:
            results = await run_packed(
                self.redis, self._link, cast(list[bytes], packed), scripts, wait=wait
            )
        if results is None:
            commands = [command for command, _, _, _, _ in batch]
            results = await run_pipeline(self.redis, commands, scripts, wait=wait, link=self._link)
        if wait is None:
            return results
        acked = results.pop()
        if acked >= self.wait_replicas:
            return results
        short = ReplicationTimeout(
            f"{acked} of {self.wait_replicas} replicas confirmed within {WAIT_TIMEOUT_MS} ms"
        )
        return [
            short if write and not isinstance(result, BaseException) else result
            for (_, _, write, _, _), result in zip(batch, results, strict=True)
        ]

    # -- users and accounts ----------------------------------------------------------------

    async def lookup_user(self, key: str) -> UserRecord | None:
        user_key = self.keys.user(key)
        fields = await self._ordered(lambda pipe: pipe.hgetall(user_key))
        if not fields:
            return None
        nick = text(fields.get(b"nick"))
        if fields.get(b"account") != b"1":
            return UserRecord(nick)
        password_hash = fields.get(b"password_hash")
        ident = text(fields.get(b"ident")) or key
        account = Account(nick, fields.get(b"admin") == b"1", text(password_hash) or None, ident)
        return UserRecord(nick, account)

    async def remember_user(self, nick: str) -> None:
        key = self.keys.user(nick.lower())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "nick", nick)
            pipe.hsetnx(key, "created", repr(time.time()))
            await pipe.execute()

    async def create_account(
        self, nick: str, *, admin: bool = False, password_hash: str | None = None
    ) -> None:
        """Accounts outrank guests: a guest identity holding the nick ends here (rev 2)."""
        await self._create_account(
            keys=[self.keys.anchor],
            args=[
                self.keys.prefix,
                nick.lower(),
                new_ident("a"),
                nick,
                int(admin),
                password_hash or "",
                repr(time.time()),
            ],
        )

    async def remove_account(self, key: str) -> bool:
        record = await self.lookup_user(key)
        if record is None or record.account is None:
            return False
        tokens = [info for info in await self._tokens() if info[1] == key]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.user(key), mapping={"account": 0, "admin": 0})
            pipe.hdel(self.keys.user(key), "password_hash", "ident")
            pipe.srem(self.keys.accounts, key)
            # The account's identity ends: its queue does not pass to the nick's next holder.
            pipe.delete(self.keys.pending(record.account.ident))
            pipe.delete(f"{self.keys.prefix}pendingby:{record.account.ident}")
            for token_hash, *_ in tokens:
                pipe.delete(self.keys.token(token_hash))
                pipe.zrem(self.keys.tokens, token_hash)
            pipe.incr(self.keys.credentials)
            await pipe.execute()
        return True

    async def list_accounts(self) -> list[Account]:
        keys = sorted(texts(await self.redis.smembers(self.keys.accounts)))
        accounts = []
        for key in keys:
            record = await self.lookup_user(key)
            if record is not None and record.account is not None:
                accounts.append(record.account)
        return accounts

    async def set_password(self, key: str, password_hash: str) -> bool:
        if not await self.redis.sismember(self.keys.accounts, key):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.user(key), "password_hash", password_hash)
            pipe.incr(self.keys.credentials)
            await pipe.execute()
        return True

    async def add_token(self, key: str, token_hash: str, label: str) -> None:
        created = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.token(token_hash),
                mapping={"user": key, "label": label, "created": repr(created)},
            )
            pipe.zadd(self.keys.tokens, {token_hash: created})
            await pipe.execute()

    async def token_owner(self, token_hash: str) -> str | None:
        owner = await self.redis.hget(self.keys.token(token_hash), "user")
        return text(owner) if owner is not None else None

    async def _tokens(self) -> list[tuple[str, str, str, float]]:
        hashes = texts(await self.redis.zrange(self.keys.tokens, 0, -1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for token_hash in hashes:
                pipe.hmget(self.keys.token(token_hash), ["user", "label", "created"])
            rows = await pipe.execute()
        return [
            (token_hash, text(user), text(label), float(text(created) or 0))
            for token_hash, (user, label, created) in zip(hashes, rows, strict=True)
            if user is not None
        ]

    async def list_tokens(self, key: str | None) -> list[TokenInfo]:
        return [
            TokenInfo(token_id(token_hash), user, label, created)
            for token_hash, user, label, created in await self._tokens()
            if key is None or user == key
        ]

    async def revoke_token(self, token_id: str) -> bool:
        wanted = token_id.lower()
        if len(wanted) != TOKEN_ID_LENGTH:
            return False
        doomed = [h for h, *_ in await self._tokens() if h[:TOKEN_ID_LENGTH] == wanted]
        if not doomed:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            for token_hash in doomed:
                pipe.delete(self.keys.token(token_hash))
                pipe.zrem(self.keys.tokens, token_hash)
            pipe.incr(self.keys.credentials)
            await pipe.execute()
        return True

    async def credentials_version(self) -> str:
        version = await self.redis.get(self.keys.credentials)
        return text(version) if version is not None else "0"

    # -- identities (rev 2) ----------------------------------------------------------------

    async def epoch(self) -> str:
        assert self._epoch is not None, "store is not open"
        return self._epoch

    async def verify_epoch(self) -> str:
        """Read the epoch again after reaching Redis anew; rotate it if Redis lost what this
        node saw (:mod:`imchat.server.redis_epoch`). Returns the epoch now served."""
        self._epoch = await verify_epoch(self.redis, self.keys.prefix, self._epoch or "", self.seen)
        return self._epoch

    async def epoch_changed(self) -> str | None:
        """The epoch in Redis if it is no longer the one served (None: unchanged)."""
        current = await self.redis.get(self.keys.epoch)
        if current is not None and text(current) == self._epoch:
            return None
        return text(current) if current is not None else "(none)"

    async def identity(self, key: str) -> Identity | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.user(key), ["nick", "account", "admin", "password_hash", "ident"])
            pipe.hmget(self.keys.guest(key), ["ident", "nick"])
            pipe.pttl(self.keys.guest(key))
            user, guest, ttl = await pipe.execute()
        nick, account, admin, password_hash, ident = user
        if account == b"1":
            ident_text = text(ident) or key
            return Identity(
                text(nick),
                ident_text,
                Account(text(nick), admin == b"1", text(password_hash) or None, ident_text),
            )
        if guest[0] is None:
            return None
        held_until = time.time() + ttl / 1000 if ttl >= 0 else None
        return Identity(text(guest[1]), text(guest[0]), held_until=held_until)

    async def claim_guest(
        self, nick: str, resume: str | None, new_resume: str, hold: float
    ) -> GuestClaim:
        reply = await self._claim_guest(
            keys=[self.keys.anchor],
            args=[
                self.keys.prefix,
                nick.lower(),
                nick,
                resume or "",
                new_ident("g"),
                new_resume,
                # Until its connect script makes it online: long enough for any hello.
                int(max(hold, CLAIM_GRACE) * 1000),
                # A new identity whose welcome never went out (Redis or the connection lost
                # before its session was counted) has a resume nobody knows: it is not held
                # for the whole guest_hold, only that grace.
                int(CLAIM_GRACE * 1000),
            ],
        )
        status = text(reply[0])
        if status == "account":
            return GuestClaim(ClaimStatus.ACCOUNT)
        if status == "taken":
            ttl = int(text(reply[1]))
            return GuestClaim(
                ClaimStatus.TAKEN, held_until=time.time() + ttl / 1000 if ttl >= 0 else None
            )
        identity = Identity(text(reply[2]), text(reply[1]))
        if status == "new":
            self._note_claim(identity.ident, nick.lower())
        return GuestClaim(ClaimStatus(status), identity)

    def _note_claim(self, ident: str, key: str) -> None:
        """Remember a claim for its grace only: after it the claim's own TTL has ended it, or
        its session was counted online and the fanout's scripts hold it."""
        now = time.monotonic()
        claimed = self._claimed
        while claimed:
            oldest = next(iter(claimed))
            if now - claimed[oldest][1] < CLAIM_GRACE:
                break
            del claimed[oldest]
        claimed[ident] = (key, now)

    async def guest_left(self, ident: str, hold: float) -> None:
        """Holds are the fanout scripts' (they run when a cluster's last session ends: a node
        cannot know whether another node still serves the guest). Only a claim this node made
        whose session was never counted online is let go here, when the hold is 0."""
        claim = self._claimed.pop(ident, None)
        if hold <= 0 and claim is not None:
            await self._release_claim(
                keys=[self.keys.anchor], args=[self.keys.prefix, claim[0], ident]
            )

    async def dm_streams(self, ident: str) -> list[str]:
        return [text(s) for s in await self.redis.hkeys(self.keys.since(ident))]

    async def hold_guests(self, hold: float) -> None:
        """Nothing to do: holds are TTLs in Redis, which outlives any one node."""

    # -- rooms -----------------------------------------------------------------------------

    async def room(self, name: str) -> RoomInfo | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.room(name), "topic")
            pipe.hget(self.keys.seq, StreamId.room(name).key)
            topic, last = await pipe.execute()
        if topic is None:
            return None
        return RoomInfo(name, text(topic), int(last or 0))

    async def rooms(self) -> list[RoomInfo]:
        names = texts(await self.redis.smembers(self.keys.rooms))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.room(name), "topic")
                pipe.hget(self.keys.seq, StreamId.room(name).key)
            values = await pipe.execute()
        return [
            RoomInfo(name, text(values[2 * i]), int(values[2 * i + 1] or 0))
            for i, name in enumerate(names)
        ]

    async def room_count(self) -> int:
        return int(await self.redis.scard(self.keys.rooms))

    async def room_page(self, after: str | None, limit: int) -> tuple[list[RoomInfo], bool]:
        """The names in one command, then the page's records only (``rooms`` read three
        commands per room: 5,000 rooms took 180 times as long as 10)."""
        names = texts(await self.redis.smembers(self.keys.rooms))
        page = heapq.nsmallest(limit + 1, (n for n in names if after is None or n > after))
        shown = page[:limit]
        if not shown:
            return [], False
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in shown:
                pipe.hget(self.keys.room(name), "topic")
            pipe.hmget(self.keys.seq, [StreamId.room(name).key for name in shown])
            values = await pipe.execute()
        seqs = values[-1]
        infos = [RoomInfo(name, text(values[i]), int(seqs[i] or 0)) for i, name in enumerate(shown)]
        return infos, len(page) > limit

    async def create_room(self, name: str) -> RoomInfo:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.keys.room(name), "topic", "")
            pipe.hsetnx(self.keys.room(name), "created", repr(time.time()))
            pipe.sadd(self.keys.rooms, name)
            await pipe.execute()
        info = await self.room(name)
        assert info is not None
        return info

    async def set_topic(self, name: str, topic: str) -> None:
        await self.redis.hset(self.keys.room(name), "topic", topic)

    # -- messages --------------------------------------------------------------------------

    async def append(self, draft: Draft) -> Stored:
        """Store and publish in one step; the event goes to whoever is its audience then.

        A room message goes to the room's members at the moment it is stored; a DM to both
        users if the recipient is online anywhere, else it waits in their pending list; an
        announcement to every session.
        """
        return await self.start_append(draft)

    def start_append(self, draft: Draft) -> asyncio.Future[Stored]:
        """:meth:`append` without a task of its own: the script is queued on the ordered
        pipeline now (so appends reach Redis in call order) and its reply is read into the
        :class:`Stored` where the batch's results are handed out. The say path uses this, as
        with the SQLite store (a task and a coroutine per message cost several µs)."""
        if draft.feature is not None:  # revision 3: checked in the same atomic script
            # Queued now, like the others; its reply is read in a task (a retry may follow).
            return asyncio.ensure_future(
                self._append_feature(
                    draft, features_redis.append(self, draft, self._append_args(draft))
                )
            )
        command, then, packed = self._append_command(draft)
        return self._ordered(command, write=True, then=then, packed=packed)

    def _append_command(
        self, draft: Draft
    ) -> tuple[Callable[[Pipeline], Any], Callable[[bytes], Stored], bytes | None]:
        """An append on the ordered pipeline: the script's call on a redis-py pipeline, what
        reads its reply, and the same call packed (None: the link takes no packed commands)."""
        script = self._append
        anchor = self.keys.anchor
        return (
            # execute_command: evalsha's wrappers add nothing to a bare EVALSHA.
            lambda pipe: pipe.execute_command(
                "EVALSHA", script.sha, 1, anchor, *self._append_args(draft)
            ),
            lambda reply: self._stored(draft, reply),
            self._packed_append(draft) if self._link.usable else None,
        )

    def queue_append(self, draft: Draft, owner: object) -> tuple[asyncio.Future[Any], int]:
        """:meth:`start_append` for a run of room messages: the ones ``owner`` (a session)
        queues one after another share one future, which settles with every outcome in order
        (a refusal or a failure an exception in its place); this message's is at the index
        returned (-1: the future is this message's alone, a revision 3 feature's).

        Each is still its own command in the ordered pipeline, in call order; only the
        future is shared: made, settled and awaited once per run instead of once per message
        (with the reply's callback, ~2,000 instructions a message). The future is one
        session's: a cancelled task cancels the future it waits on, which must not cancel
        another session's messages.
        """
        if draft.feature is not None:
            return self.start_append(draft), -1
        group = self._group
        if group is None or group.owner is not owner:
            if group is not None:
                group.open = False
            loop = self._loop
            if loop is None:  # asked once: get_running_loop costs a getpid() system call
                loop = self._loop = asyncio.get_running_loop()
            group = self._group = _AppendGroup(owner, loop.create_future())
            # Once per group: until the ordered pipeline takes its next batch (which closes
            # the group), what joins it is taken with it.
            self._queued.set()
        command, then, packed = self._append_command(draft)
        self._queue.append((command, group, True, then, packed))
        index = group.size
        group.size = index + 1
        return group.future, index

    def _append_args(self, draft: Draft) -> tuple[str | bytes, ...]:
        """The append script's ARGV for ``draft`` (see :data:`APPEND_LUA`)."""
        return (
            self.keys.prefix,
            draft.stream.key,
            draft.cid or "",
            self._encoder.encode(draft.event)[:-1],
            draft.hold or "",
            draft.sender_key,
            draft.cid_owner,
            draft.recipient_ident,
            f"{draft.max_queued} {draft.max_queued_per_sender} {draft.queue_source}",
            "1" if draft.as_member else "0",
        )

    def _packed_append(self, draft: Draft) -> bytes:
        """The append's ``EVALSHA`` as RESP, what :func:`pack_args` makes of ``EVALSHA sha
        1 anchor`` and :meth:`_append_args`, from two kept parts: all up to the stream, and
        all after the hold (a sender's are the same message after message). Only the
        ``cid``, the event and the hold are packed per message: packing the 14 arguments
        each time (hiredis formats every length with ``sprintf``) cost more than the rest
        of the append's way to Redis."""
        sha = self._append.sha
        if sha != self._packed_sha:  # never, unless the script changed: start afresh
            self._packed_heads.clear()
            self._packed_sha = sha
        stream = draft.stream.key
        head = self._packed_heads.get(stream)
        if head is None:
            if len(self._packed_heads) >= PACKED_CACHE:
                self._packed_heads.clear()
            keys = self.keys
            head = pack_args(("EVALSHA", sha, 1, keys.anchor, keys.prefix, stream))
            head = self._packed_heads[stream] = b"*14" + head[head.index(b"\r\n") :]
        sender = (
            draft.sender_key,
            draft.owner,  # with the sender key, the cid owner (not its property: a call less)
            draft.recipient_ident,
            draft.max_queued,
            draft.max_queued_per_sender,
            draft.queue_source,
            draft.as_member,
        )
        tail = self._packed_tails.get(sender)
        if tail is None:
            if len(self._packed_tails) >= PACKED_CACHE:
                self._packed_tails.clear()
            tail = pack_args(self._append_args(draft)[5:])
            tail = self._packed_tails[sender] = tail[tail.index(b"\r\n") + 2 :]
        cid = (draft.cid or "").encode()
        event = self._encoder.encode(draft.event)
        hold = (draft.hold or "").encode()
        # The event's JSON without its closing brace (the script adds seq and ts).
        return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
            head,
            len(cid),
            cid,
            len(event) - 1,
            event[:-1],
            len(hold),
            hold,
            tail,
        )

    async def _append_feature(self, draft: Draft, reply: Awaitable[bytes]) -> Stored:
        return self._stored(draft, await reply)

    def _stored(self, draft: Draft, reply: bytes) -> Stored:
        """The append script's reply as a :class:`Stored`, or its refusal raised."""
        stream = draft.stream
        key = stream.key
        if key[0] == "d":  # a DM's (``after_append`` does nothing for others: a call less)
            features_redis.after_append(self, stream, reply)
        head, payload = reply.split(b"\n", 1)
        status, seq, ts, delivered = head.split(b" ")
        if status == b"-1":
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {stream.room_name}")
        if status == b"-2":
            raise ProtocolError(
                ErrorCode.LIMIT_REACHED,
                f"{draft.max_queued} messages already wait for them; try later",
            )
        if status == b"-3":
            raise ProtocolError(ErrorCode.LIMIT_REACHED, share_refusal(draft.max_queued_per_sender))
        if seq != b"0" and payload:
            self.seen.note(key, int(seq), payload)
        return Stored(
            int(seq),
            float(ts),
            payload,
            duplicate=status == b"0",
            published=True,
            # ``key == "a"``: StreamKind.ANNOUNCEMENTS without building the enum member.
            delivered=int(delivered) if key == "a" else None,
        )

    async def history(
        self,
        stream: StreamId,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        viewer: str | None = None,
    ) -> list[bytes]:
        key = self.keys.messages(stream.key)
        lower = after
        keys = stream.dm_keys
        if viewer is not None and keys is not None and viewer not in keys:
            # A guest identity (or an account of revision 2) reads from its first message on.
            first = await self.redis.hget(self.keys.since(viewer), stream.key)
            if first is None:
                return []
            lower = max(lower if lower is not None else -1, int(first) - 1)
        upper: Any = f"({before}" if before is not None else "+inf"
        bottom: Any = f"({lower}" if lower is not None else "-inf"
        if after is not None:
            result = await self.redis.zrangebyscore(key, bottom, upper, start=0, num=limit)
            return blobs(result)
        result = await self.redis.zrevrangebyscore(key, upper, bottom, start=0, num=limit)
        return blobs(result)[::-1]

    async def peek_pending(self, recipient: str, limit: int) -> list[tuple[StreamId, int, bytes]]:
        payloads = blobs(await self.redis.lrange(self.keys.pending(recipient), 0, limit - 1))
        items = []
        for payload in payloads:
            event = msgspec.json.decode(payload)
            stream = StreamId.dm(str(event["from"]).lower(), str(event["to"]).lower())
            items.append((stream, int(event["seq"]), payload))
        return items

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Trim each stream's sorted set. Seqs come from the ``seq`` hash, which pruning never
        touches, so a stream pruned empty continues where it was. What the feature keys hold
        of the pruned messages goes with them (:meth:`_forget_below`)."""
        deleted = 0
        streams = [s.decode() for s in cast(list[bytes], await self.redis.hkeys(self.keys.seq))]
        for stream in streams:
            key = self.keys.messages(stream)
            oldest = await self._oldest_seq(stream)
            gone = 0
            if keep:
                gone += int(await self.redis.zremrangebyrank(key, 0, -(keep + 1)))
            if before_ts is not None:
                gone += await self._prune_older(key, before_ts)
            if gone:
                await self._forget_pruned(stream, oldest)
            deleted += gone
        return deleted

    async def _oldest_seq(self, stream: str) -> int:
        """The seq of the stream's oldest stored message; past its last seq if it has none."""
        first = cast(
            list[tuple[bytes, float]],
            await self.redis.zrange(self.keys.messages(stream), 0, 0, withscores=True),
        )
        if first:
            return int(first[0][1])
        return int(await self.redis.hget(self.keys.seq, stream) or 0) + 1

    async def _forget_pruned(self, stream: str, was_oldest: int) -> None:
        """Drop the author (``by:``), delete marks (``del:``) and reactions (``rx:``) of the
        pruned messages: retention removes a stream's oldest seqs (``was_oldest`` up to the
        new oldest), and a pruned message must leave nothing behind."""
        redis, prefix = self.redis, self.keys.prefix
        floor = await self._oldest_seq(stream)
        by, dels, rx = (f"{prefix}{kind}:{stream}" for kind in ("by", "del", "rx"))
        old_dels = [m for m in texts(await redis.smembers(dels)) if int(m) < floor]
        old_rx = [f for f in texts(await redis.hkeys(rx)) if int(f.split("\n", 1)[0]) < floor]
        old_by = [str(seq) for seq in range(was_oldest, floor)]
        await self._remove(((by, old_by), (rx, old_rx)), ((dels, old_dels),))
        if await redis.hlen(by) > await redis.zcard(self.keys.messages(stream)):
            # Fields of messages pruned before pruning took them along (at most one per
            # stored message is right): found once, then gone.
            old_by = [f for f in texts(await redis.hkeys(by)) if int(f) < floor]
            await self._remove(((by, old_by),), ())

    async def _remove(
        self, fields: tuple[tuple[str, list[str]], ...], members: tuple[tuple[str, list[str]], ...]
    ) -> None:
        """HDEL ``fields`` and SREM ``members`` of their keys, in pages, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, names in fields:
                for start in range(0, len(names), PRUNE_PAGE):
                    pipe.hdel(key, *names[start : start + PRUNE_PAGE])
            for key, names in members:
                for start in range(0, len(names), PRUNE_PAGE):
                    pipe.srem(key, *names[start : start + PRUNE_PAGE])
            await pipe.execute()

    async def _prune_older(self, key: str, before_ts: float) -> int:
        """Remove the stream's messages with ``ts`` below ``before_ts`` (oldest first)."""
        deleted = 0
        while True:
            page = cast(
                list[tuple[bytes, float]],
                await self.redis.zrange(key, 0, PRUNE_PAGE - 1, withscores=True),
            )
            old = [seq for payload, seq in page if _ts_of(payload) < before_ts]
            if not old:
                return deleted
            # ts grows with seq: everything up to the newest old one goes.
            deleted += int(await self.redis.zremrangebyscore(key, "-inf", max(old)))
            if len(old) < len(page):
                return deleted

    async def drop_pending(self, recipient: str, items: list[tuple[StreamId, int]]) -> None:
        if not items:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, seq in items:
                pipe.zrangebyscore(self.keys.messages(stream.key), seq, seq)
            found = [blobs(reply) for reply in await pipe.execute()]
        for payloads in found:
            if payloads:
                await lrem(self.redis, self.keys.pending(recipient), 1, payloads[0])

    async def claim_pending(self, recipient: str, stream: StreamId, seq: int) -> bool:
        found = blobs(await self.redis.zrangebyscore(self.keys.messages(stream.key), seq, seq))
        if not found:
            return False
        return bool(await lrem(self.redis, self.keys.pending(recipient), 1, found[0]))

    async def set_pending(self, recipient: str, stream: StreamId, seq: int) -> None:
        found = blobs(await self.redis.zrangebyscore(self.keys.messages(stream.key), seq, seq))
        if found:
            await self.redis.rpush(self.keys.pending(recipient), found[0])

    # -- revision 3: read markers and search (see features_redis) ----------------------------

    async def last_seq(self, stream: StreamId) -> int:
        return await features_redis.last_seq(self, stream)

    async def mark(self, user_key: str, stream: StreamId, seq: int) -> bool | None:
        return await features_redis.mark(self, user_key, stream, seq)

    async def marker(self, user_key: str, stream: StreamId) -> int:
        return await features_redis.marker(self, user_key, stream)

    async def markers(self, user_key: str) -> list[tuple[StreamId, int]]:
        return await features_redis.markers(self, user_key)

    async def search(
        self, scope: SearchScope, text: str, *, before: float | None, limit: int
    ) -> SearchResult:
        return await features_redis.search(self, scope, text, before, limit)

    # -- webhooks (imchat.server.hookstore.HookStore) --------------------------------------

    def _hook_key(self, token_hash: str) -> str:
        return f"{self.keys.prefix}hook:{token_hash}"

    async def add_hook(self, token_hash: str, hook: Hook) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._hook_key(token_hash),
                mapping={
                    "kind": hook.kind,
                    "room": hook.room,
                    "user": hook.user,
                    "secret": hook.secret,
                    "template": hook.template,
                    "created": repr(hook.created),
                },
            )
            pipe.zadd(f"{self.keys.prefix}hooks", {token_hash: hook.created})
            await pipe.execute()

    async def hook_by_token(self, token_hash: str) -> Hook | None:
        fields = await self.redis.hgetall(self._hook_key(token_hash))
        if not fields:
            return None
        return Hook(
            token_id(token_hash),
            text(fields.get(b"kind")),
            text(fields.get(b"room")),
            text(fields.get(b"user")),
            text(fields.get(b"secret")),
            text(fields.get(b"template")),
            float(fields.get(b"created") or 0),
        )

    async def _hook_hashes(self) -> list[str]:
        """Token hashes of every hook, oldest first."""
        found = await self.redis.zrange(f"{self.keys.prefix}hooks", 0, -1)
        return texts(found)

    async def list_hooks(self) -> list[Hook]:
        found = [await self.hook_by_token(h) for h in await self._hook_hashes()]
        return [hook for hook in found if hook is not None]

    async def remove_hook(self, hook_id: str) -> bool:
        index = f"{self.keys.prefix}hooks"
        for token_hash in await self._hook_hashes():
            if token_id(token_hash) == hook_id.lower():
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self._hook_key(token_hash))
                    pipe.zrem(index, token_hash)
                    await pipe.execute()
                return True
        return False

    async def ping(self) -> None:
        await self._ordered(lambda pipe: pipe.ping())
