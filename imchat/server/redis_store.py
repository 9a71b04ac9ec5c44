"""The clustered store: every server process shares users, rooms and history in one Redis.

Messages are stored by one Lua script that, atomically, checks the ``cid``, takes the next
``seq``, stores the event, and PUBLISHes it to every node (so publish order is seq order and
a message can never be seen without being stored). An ``ok`` follows the script's reply, so it
is sent only once Redis holds the message; how durable that is depends on Redis's own
persistence (``docs/redis.md``).

Key layout (``P`` is the prefix, ``imchat:`` by default)::

    P user:<key>        hash   nick, created, account (0/1), admin (0/1), password_hash
    P accounts          set    keys that have an account
    P token:<hash>      hash   user, label, created
    P tokens            zset   token hashes by creation time
    P room:<name>       hash   topic, created
    P rooms             set    room names
    P seq               hash   stream -> last seq
    P m:<stream>        zset   the stream's event payloads, scored by seq
    P cid:<sender>      hash   cid -> "<stream>\\n<seq>\\n<ts>"
    P pending:<key>     list   payloads of DMs to deliver at the user's next hello
    P events            pub/sub channel shared by all nodes (see redis_fanout)

Presence keys are described in :mod:`imchat.server.redis_fanout`. Scripts name keys they
build from the prefix, so this needs a single Redis (or a replicated primary), not Redis
Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from imchat.protocol import ErrorCode, ProtocolError

from .store import (
    TOKEN_ID_LENGTH,
    Account,
    Draft,
    RoomInfo,
    Stored,
    StoreUnavailable,
    TokenInfo,
    UserRecord,
    token_id,
)
from .streams import StreamId, StreamKind

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "imchat:"
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


def connect_redis(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client that never retries a command on its own.

    A retried script could store a message twice (one without ``cid``): a failed command
    must reach the hub, which answers ``internal`` and never ``ok``. ``blocking`` clients
    (pub/sub) have no read timeout, since they wait for messages indefinitely.
    """
    return aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=3.0,
        socket_timeout=None if blocking else 5.0,
        health_check_interval=0,
    )


#: Shared by the Lua scripts: Redis's clock as a JSON number of Unix seconds, ms precision.
LUA_PRELUDE = """
local function now_ts()
  local t = redis.call('TIME')
  local ms = math.floor(tonumber(t[2]) / 1000)
  if ms == 0 then return t[1] end
  local s = string.format('%s.%03d', t[1], ms)
  s = string.gsub(s, '0+$', '')
  return s
end
"""

#: ARGV: prefix, stream, cid or '', event JSON without its closing brace, hold, sender key.
#: Keys are derived from the prefix (few arguments: packing them is the client's main cost).
#: Returns one string, "<status> <seq> <ts> <delivered>\n<payload>" (one bulk reply parses
#: much faster than an array): status 1 stored, 0 duplicate cid, -1 not a member; delivered
#: is the cluster's session count for an announcement.
APPEND_LUA = (
    LUA_PRELUDE
    + """
local prefix, stream, cid, body, hold, sender = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local kind = string.sub(stream, 1, 1)
local cids = prefix .. 'cid:' .. sender
if cid ~= '' then
  local prev = redis.call('HGET', cids, cid)
  if prev then
    local pstream, pseq, pts = string.match(prev, '^(.-)\\n(%d+)\\n(.*)$')
    local found = redis.call('ZRANGEBYSCORE', prefix .. 'm:' .. pstream, pseq, pseq)
    return '0 ' .. pseq .. ' ' .. pts .. ' 0\\n' .. (found[1] or '')
  end
end
local members
if kind == 'r' then
  members = prefix .. 'members:' .. string.sub(stream, 3)
  if redis.call('HEXISTS', members, sender) == 0 then return '-1 0 0 0\\n' end
end
local seq = redis.call('HINCRBY', prefix .. 'seq', stream, 1)
local ts = now_ts()
local payload = body .. ',"seq":' .. seq .. ',"ts":' .. ts .. '}'
redis.call('ZADD', prefix .. 'm:' .. stream, seq, payload)
if cid ~= '' then
  redis.call('HSET', cids, cid, stream .. '\\n' .. seq .. '\\n' .. ts)
end
local recipients
local delivered = 0
if kind == 'r' then
  recipients = table.concat(redis.call('HKEYS', members), ' ')
elseif kind == 'd' then
  local low, high = string.match(stream, '^d:(%S+) (%S+)$')
  local to = low
  if low == sender then to = high end
  if to == sender then
    recipients = sender
  elseif tonumber(redis.call('HGET', prefix .. 'sessions', to) or '0') > 0 then
    recipients = sender .. ' ' .. to
  else
    redis.call('RPUSH', prefix .. 'pending:' .. to, payload)
    recipients = sender
  end
else
  recipients = '*'
  delivered = tonumber(redis.call('GET', prefix .. 'nsessions') or '0')
end
redis.call('PUBLISH', prefix .. 'events', hold .. '\\n\\n' .. recipients .. '\\n' .. payload)
return '1 ' .. seq .. ' ' .. ts .. ' ' .. delivered .. '\\n' .. payload
"""
)

#: KEYS: pending list. Returns and removes every payload in it, oldest first.
TAKE_PENDING_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""


async def run_pipeline(
    redis: aioredis.Redis, commands: list[Callable[[Pipeline], Any]], scripts: list[Any]
) -> list[Any]:
    """Run commands in one pipeline, in order; results (or exceptions) in the same order.

    Scripts are sent as bare EVALSHA: redis-py's pipeline would check them with an extra
    ``SCRIPT EXISTS`` round trip per batch. Only after a Redis restart (scripts flushed) do
    some fail with NOSCRIPT; those did not run, so they are loaded and run again, in order.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            command(pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in scripts:
            script.sha = await redis.script_load(script.script)
        async with redis.pipeline(transaction=False) as pipe:
            for i in missing:
                commands[i](pipe)
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
    return results


class Keys:
    """Key names under one prefix, in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.accounts = f"{prefix}accounts"
        self.tokens = f"{prefix}tokens"
        self.rooms = f"{prefix}rooms"
        self.seq = f"{prefix}seq"
        self.channel = f"{prefix}events"
        # Presence (maintained by RedisFanout; the append script reads them).
        self.online = f"{prefix}online"
        self.sessions = f"{prefix}sessions"
        self.nsessions = f"{prefix}nsessions"
        self.nodes = f"{prefix}nodes"

    def user(self, key: str) -> str:
        return f"{self.prefix}user:{key}"

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}token:{token_hash}"

    def room(self, name: str) -> str:
        return f"{self.prefix}room:{name}"

    def messages(self, stream: str) -> str:
        return f"{self.prefix}m:{stream}"

    def cids(self, sender_key: str) -> str:
        return f"{self.prefix}cid:{sender_key}"

    def pending(self, key: str) -> str:
        return f"{self.prefix}pending:{key}"

    def members(self, room: str) -> str:
        return f"{self.prefix}members:{room}"

    def user_rooms(self, key: str) -> str:
        return f"{self.prefix}urooms:{key}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_users(self, node_id: str) -> str:
        return f"{self.prefix}nodeusers:{node_id}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """:class:`imchat.server.store.Store` in Redis, shared by every node of a cluster.

    Only with :class:`imchat.server.redis_fanout.RedisFanout`: messages are delivered by
    publishing them (``Stored.published``), and room membership lives in Redis.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.redis = connect_redis(url)
        self._append = self.redis.register_script(APPEND_LUA)
        self._take_pending = self.redis.register_script(TAKE_PENDING_LUA)
        self._encoder = msgspec.json.Encoder()
        self._queue: list[tuple[Callable[[Pipeline], Any], asyncio.Future[Any]]] = []
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            raise RedisUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        self._sender = asyncio.create_task(self._send_batches())

    async def close(self) -> None:
        if self._sender is not None:
            deadline = asyncio.get_running_loop().time() + 5.0
            while self._queue and not self._sender.done():
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)  # the last batch is on its way
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self.redis.aclose()

    def _ordered(self, command: Callable[[Pipeline], Any]) -> asyncio.Future[Any]:
        """Queue one command for the ordered pipeline; its result resolves the future.

        Appends and user lookups go through one connection in call order (results resolve in
        that order too): the hub starts a session's pipelined say/dm requests in order, and
        this keeps their seqs in that order. It also batches them, one round trip for many.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        self._queued.set()
        return future

    async def _send_batches(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                try:
                    results = await run_pipeline(self.redis, [c for c, _ in batch], [self._append])
                except Exception as exc:  # every waiter must hear of it, whatever it was
                    log.error("Redis failed a batch of %d commands: %s", len(batch), exc)
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    # -- users and accounts ----------------------------------------------------------------

    async def lookup_user(self, key: str) -> UserRecord | None:
        user_key = self.keys.user(key)
        fields = await self._ordered(lambda pipe: pipe.hgetall(user_key))
        if not fields:
            return None
        nick = _text(fields.get(b"nick"))
        if fields.get(b"account") != b"1":
            return UserRecord(nick)
        password_hash = fields.get(b"password_hash")
        account = Account(nick, fields.get(b"admin") == b"1", _text(password_hash) or None)
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
        key = nick.lower()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.user(key), mapping={"nick": nick, "account": 1, "admin": int(admin)}
            )
            pipe.hsetnx(self.keys.user(key), "created", repr(time.time()))
            if password_hash is None:
                pipe.hdel(self.keys.user(key), "password_hash")
            else:
                pipe.hset(self.keys.user(key), "password_hash", password_hash)
            pipe.sadd(self.keys.accounts, key)
            await pipe.execute()

    async def remove_account(self, key: str) -> bool:
        record = await self.lookup_user(key)
        if record is None or record.account is None:
            return False
        tokens = [info for info in await self._tokens() if info[1] == key]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.user(key), mapping={"account": 0, "admin": 0})
            pipe.hdel(self.keys.user(key), "password_hash")
            pipe.srem(self.keys.accounts, key)
            for token_hash, *_ in tokens:
                pipe.delete(self.keys.token(token_hash))
                pipe.zrem(self.keys.tokens, token_hash)
            await pipe.execute()
        return True

    async def list_accounts(self) -> list[Account]:
        keys = sorted(_text(k) for k in await self.redis.smembers(self.keys.accounts))
        accounts = []
        for key in keys:
            record = await self.lookup_user(key)
            if record is not None and record.account is not None:
                accounts.append(record.account)
        return accounts

    async def set_password(self, key: str, password_hash: str) -> bool:
        if not await self.redis.sismember(self.keys.accounts, key):
            return False
        await self.redis.hset(self.keys.user(key), "password_hash", password_hash)
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
        return _text(owner) if owner is not None else None

    async def _tokens(self) -> list[tuple[str, str, str, float]]:
        hashes = [_text(h) for h in await self.redis.zrange(self.keys.tokens, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for token_hash in hashes:
                pipe.hmget(self.keys.token(token_hash), ["user", "label", "created"])
            rows = await pipe.execute()
        return [
            (token_hash, _text(user), _text(label), float(_text(created) or 0))
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
            await pipe.execute()
        return True

    # -- rooms -----------------------------------------------------------------------------

    async def room(self, name: str) -> RoomInfo | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.room(name), "topic")
            pipe.hget(self.keys.seq, StreamId.room(name).key)
            topic, last = await pipe.execute()
        if topic is None:
            return None
        return RoomInfo(name, _text(topic), int(last or 0))

    async def rooms(self) -> list[RoomInfo]:
        names = [_text(n) for n in await self.redis.smembers(self.keys.rooms)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.room(name), "topic")
                pipe.hget(self.keys.seq, StreamId.room(name).key)
            values = await pipe.execute()
        return [
            RoomInfo(name, _text(values[2 * i]), int(values[2 * i + 1] or 0))
            for i, name in enumerate(names)
        ]

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
        stream = draft.stream
        args = (
            self.keys.prefix,
            stream.key,
            draft.cid or "",
            self._encoder.encode(draft.event)[:-1],
            draft.hold or "",
            draft.sender_key,
        )
        script = self._append
        reply: bytes = await self._ordered(lambda pipe: pipe.evalsha(script.sha, 0, *args))
        head, payload = reply.split(b"\n", 1)
        status, seq, ts, delivered = head.split(b" ")
        if status == b"-1":
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {stream.room_name}")
        return Stored(
            int(seq),
            float(ts),
            payload,
            duplicate=status == b"0",
            published=True,
            delivered=int(delivered) if stream.kind is StreamKind.ANNOUNCEMENTS else None,
        )

    async def history(
        self, stream: StreamId, *, after: int | None, before: int | None, limit: int
    ) -> list[bytes]:
        key = self.keys.messages(stream.key)
        upper: Any = f"({before}" if before is not None else "+inf"
        if after is not None:
            result = await self.redis.zrangebyscore(key, f"({after}", upper, start=0, num=limit)
            return list(result)
        result = await self.redis.zrevrangebyscore(key, upper, "-inf", start=0, num=limit)
        return list(reversed(result))

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Trim each stream's sorted set. Seqs come from the ``seq`` hash, which pruning never
        touches, so a stream pruned empty continues where it was."""
        deleted = 0
        streams = [s.decode() for s in cast(list[bytes], await self.redis.hkeys(self.keys.seq))]
        for stream in streams:
            key = self.keys.messages(stream)
            if keep:
                deleted += int(await self.redis.zremrangebyrank(key, 0, -(keep + 1)))
            if before_ts is not None:
                deleted += await self._prune_older(key, before_ts)
        return deleted

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

    async def take_pending(self, recipient_key: str) -> list[bytes]:
        return list(await self._take_pending(keys=[self.keys.pending(recipient_key)]))

    async def claim_pending(self, recipient_key: str, stream: StreamId, seq: int) -> bool:
        found = await self.redis.zrangebyscore(self.keys.messages(stream.key), seq, seq)
        if not found:
            return False
        return bool(await self.redis.lrem(self.keys.pending(recipient_key), 1, found[0]))

    async def set_pending(self, recipient_key: str, stream: StreamId, seq: int) -> None:
        found = await self.redis.zrangebyscore(self.keys.messages(stream.key), seq, seq)
        if found:
            await self.redis.rpush(self.keys.pending(recipient_key), found[0])
