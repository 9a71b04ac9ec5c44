"""Revision 3 on Redis: target checks, reactions, deletes, read markers and a bounded search.

A message that names a target (``Draft.feature``) is stored by :data:`FEATURE_LUA`: the
target checks, then the whole of the ordinary append script (wrapped as a function, so
``cid``, ``seq``, storing and publishing stay exactly as for any message), then the state the
message changes, in one atomic script. Its own parameters follow the
append script's ``ARGV``, which stays as it is (``KEYS`` holds only a real key: Redis Cluster
routes and checks scripts by it).

Keys added (``P`` is the prefix)::

    P del:<stream>      set    seqs of deleted messages
    P rx:<stream>       hash   "<target>\\n<user key>\\n<emoji>" -> seq of the react message
    P markers:<key>     hash   stream -> read marker of user <key>
    P dms:<key>         set    the DM streams user <key> has messages in (for search)

Search has no index on Redis: it scans the readable streams newest first, at most
:data:`SEARCH_SCAN_LIMIT` messages per request, and says ``more`` when that bound stopped it
before the start of some stream (older matches may exist: page on with ``before``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from imchat.protocol import ErrorCode, ProtocolError

from .message_features import (
    EDIT,
    TARGETABLE_KINDS,
    Query,
    SearchResult,
    SearchScope,
    dm_participants,
    owner_of,
)
from .store import Draft
from .streams import StreamId

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

    from .redis_store import RedisStore

log = logging.getLogger(__name__)

#: Messages one search reads at most, over all its streams.
SEARCH_SCAN_LIMIT = 20000
#: Messages read per round trip while scanning a stream.
SCAN_CHUNK = 500

#: ARGV: the append script's ten, then kind, target, emoji, author, admin, cid key, sender.
FEATURE_PRE_LUA = """
local fkind, target, emoji = ARGV[11], ARGV[12], ARGV[13]
local author, admin, cidkey, f_sender = ARGV[14], ARGV[15], ARGV[16], ARGV[17]
local f_prefix, f_stream, f_cid = ARGV[1], ARGV[2], ARGV[3]
local f_mkey = f_prefix .. 'm:' .. f_stream
local f_rxkey = f_prefix .. 'rx:' .. f_stream
local f_delkey = f_prefix .. 'del:' .. f_stream
local f_rxfield = target .. '\\n' .. f_sender .. '\\n' .. emoji
-- A repeated cid is answered by the append script as for any message: no checks.
if f_cid == '' or redis.call('HEXISTS', cidkey, f_cid) == 0 then
  local found = redis.call('ZRANGEBYSCORE', f_mkey, target, target)
  if not found[1] then return 'E no_such_message' end
  local ev = cjson.decode(found[1])
  local k = ev['kind']
  if (k ~= nil and k ~= 'action') or redis.call('SISMEMBER', f_delkey, target) == 1 then
    return 'E no_such_message'
  end
  local by = redis.call('HGET', f_prefix .. 'by:' .. f_stream, target)
  local own
  if by then own = by == f_sender  -- the author's identity (rev 2)
  else own = string.lower(tostring(ev['from'])) == author end  -- stored before it was kept
  if fkind == 'edit' and not own then return 'E forbidden' end
  if fkind == 'delete' and not own and admin ~= '1' then return 'E forbidden' end
  if fkind == 'react' or fkind == 'unreact' then
    local prev = redis.call('HGET', f_rxkey, f_rxfield)
    if fkind == 'react' and prev then
      local p = redis.call('ZRANGEBYSCORE', f_mkey, prev, prev)
      return 'D ' .. prev .. '\\n' .. (p[1] or '')
    end
    if fkind == 'unreact' and not prev then return 'Z' end
  end
end
local function f_append()
"""

FEATURE_POST_LUA = """
end
local f_reply = f_append()
local f_seq = string.match(f_reply, '^1 (%d+) ')
if f_seq then
  if fkind == 'delete' then redis.call('SADD', f_delkey, target)
  elseif fkind == 'react' then redis.call('HSET', f_rxkey, f_rxfield, f_seq)
  elseif fkind == 'unreact' then redis.call('HDEL', f_rxkey, f_rxfield) end
end
return f_reply
"""

#: KEYS: seq hash, markers hash. ARGV: stream, seq. 1 moved, 0 unchanged, -1 above last seq.
MARK_LUA = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local seq = tonumber(ARGV[2])
if seq > last then return -1 end
if seq == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if seq <= cur then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

_decode = msgspec.json.Decoder().decode


def feature_script(append_lua: str) -> str:
    return FEATURE_PRE_LUA + append_lua + FEATURE_POST_LUA


def _key(store: RedisStore, name: str) -> str:
    return f"{store.keys.prefix}{name}"


def append(store: RedisStore, draft: Draft, args: tuple[Any, ...]) -> Awaitable[bytes]:
    """Run the feature script; the reply in the append script's format, or a refusal raised.

    Queued on the store's ordered pipeline at the call (not when awaited), so a feature
    request keeps its place among the appends started after it.

    A repeated reaction comes back as a duplicate of the original react message, removing an
    absent one as a duplicate with seq 0: either way nothing was stored or published.
    """
    feature = draft.feature
    assert feature is not None
    params = (
        feature.kind,
        str(feature.target),
        feature.emoji,
        feature.author,
        "1" if feature.admin else "0",
        store.keys.cids(owner_of(draft)),
        owner_of(draft),
    )
    script = store.feature_lua
    anchor = store.keys.anchor

    def command(pipe: Pipeline) -> Any:
        return pipe.evalsha(script.sha, 1, anchor, *args, *params)

    # A NOSCRIPT is the batch's to handle: it runs the script again in its place.
    return _finish(store._ordered(command, write=True))


async def _finish(first: asyncio.Future[Any]) -> bytes:
    reply: bytes = await first
    if reply.startswith(b"E "):
        code = ErrorCode(reply[2:].decode())
        raise ProtocolError(
            code,
            "no such message"
            if code is ErrorCode.NO_SUCH_MESSAGE
            else "only its author may change that message",
        )
    if reply.startswith(b"D "):
        head, payload = reply.split(b"\n", 1)
        ts = _decode(payload).get("ts", 0) if payload else 0
        return b"0 " + head[2:] + b" " + repr(float(ts)).encode() + b" 0\n" + payload
    if reply == b"Z":
        return b"0 0 " + repr(round(time.time(), 3)).encode() + b" 0\n"
    return reply


def after_append(store: RedisStore, stream: StreamId, reply: bytes) -> None:
    """Remember a DM stream for both its users' searches (not awaited: no extra latency)."""
    if stream.dm_keys is None or not reply.startswith(b"1 "):
        return
    for key in set(stream.dm_keys):
        target = _key(store, f"dms:{key}")
        future = store._ordered(_sadd(target, stream.key))
        future.add_done_callback(_log_failure)


def _sadd(key: str, member: str) -> Callable[[Pipeline], Any]:
    return lambda pipe: pipe.sadd(key, member)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not record a DM stream for search: %s", future.exception())


async def migrate(store: RedisStore) -> None:
    """Once per store: record the DM streams that existed before revision 3 (one SCAN)."""
    done = _key(store, "dms-indexed")
    if await store.redis.exists(done):
        return
    pattern = f"{store.keys.prefix}m:d:*"
    start = len(store.keys.prefix) + 2
    async with store.redis.pipeline(transaction=False) as pipe:
        async for raw in store.redis.scan_iter(match=pattern, count=1000):
            stream = StreamId((raw.decode() if isinstance(raw, bytes) else raw)[start:])
            for key in set(dm_participants(stream)):
                pipe.sadd(_key(store, f"dms:{key}"), stream.key)
        pipe.set(done, "1")
        await pipe.execute()


async def mark(store: RedisStore, user_key: str, stream: StreamId, seq: int) -> bool | None:
    result = await store.mark_lua(
        keys=[store.keys.seq, _key(store, f"markers:{user_key}")], args=[stream.key, seq]
    )
    return None if int(result) < 0 else bool(int(result))


async def marker(store: RedisStore, user_key: str, stream: StreamId) -> int:
    value = await store.redis.hget(_key(store, f"markers:{user_key}"), stream.key)
    return int(value or 0)


async def markers(store: RedisStore, user_key: str) -> list[tuple[StreamId, int]]:
    found = await store.redis.hgetall(_key(store, f"markers:{user_key}"))
    entries = [(k.decode() if isinstance(k, bytes) else k, int(v)) for k, v in found.items()]
    return [(StreamId(key), seq) for key, seq in sorted(entries)]


async def last_seq(store: RedisStore, stream: StreamId) -> int:
    return int(await store.redis.hget(store.keys.seq, stream.key) or 0)


async def search(
    store: RedisStore, scope: SearchScope, text: str, before: float | None, limit: int
) -> SearchResult:
    """Scan each readable stream newest first, within :data:`SEARCH_SCAN_LIMIT` in all.

    Only the current version of a message counts (its latest edit, or itself), and nothing
    of a deleted one, as with the SQLite index.
    """
    query = Query.parse(text)
    if not query.phrases and not query.literals:
        return SearchResult()
    streams = list(dict.fromkeys(scope.streams))
    if scope.dm_user is not None:
        dms = await store.redis.smembers(_key(store, f"dms:{scope.dm_user}"))
        keys = sorted(s.decode() if isinstance(s, bytes) else s for s in dms)
        streams.extend(StreamId(key) for key in keys if StreamId(key) not in streams)
    if not streams:
        return SearchResult()
    share = max(SCAN_CHUNK, SEARCH_SCAN_LIMIT // len(streams))
    found: list[tuple[float, int, bytes]] = []
    more = False
    for stream in streams:
        hits, cut = await _scan(store, stream, query, before, limit, share)
        found.extend(hits)
        more = more or cut
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return SearchResult([payload for _, _, payload in found[:limit]], more)


async def _scan(
    store: RedisStore,
    stream: StreamId,
    query: Query,
    before: float | None,
    limit: int,
    budget: int,
) -> tuple[list[tuple[float, int, bytes]], bool]:
    key = store.keys.messages(stream.key)
    deleted = {int(s) for s in await store.redis.smembers(_key(store, f"del:{stream.key}"))}
    current: set[int] = set()  # messages whose newest version has been seen
    hits: list[tuple[float, int, bytes]] = []
    upper: Any = "+inf"
    scanned = 0
    while scanned < budget:
        chunk: list[bytes] = await store.redis.zrevrangebyscore(  # type: ignore[assignment]
            key, upper, "-inf", start=0, num=min(SCAN_CHUNK, budget - scanned)
        )
        if not chunk:
            return hits, False
        scanned += len(chunk)
        for payload in chunk:
            event = _decode(payload)
            seq, kind = int(event.get("seq", 0)), event.get("kind")
            if kind == EDIT:
                subject = event.get("target")
            elif kind in TARGETABLE_KINDS:
                subject = seq
            else:
                continue
            if not isinstance(subject, int) or subject in deleted or subject in current:
                continue
            current.add(subject)
            ts = float(event.get("ts", 0))
            if (before is None or ts < before) and query.matches(str(event.get("text", ""))):
                hits.append((ts, seq, payload))
        upper = f"({int(_decode(chunk[-1]).get('seq', 0))}"
        if len(hits) >= limit:
            return hits, False
    return hits, True
