"""The epoch of a Redis store, checked against what this node has seen (issue 13).

``welcome.epoch`` promises clients that a ``seq`` means one message for as long as the epoch
lasts (rev 2). Redis can break that without a word: a failover to a replica that lagged, or a
restart from an older snapshot, loses the last acknowledged writes, and the next messages
take their seqs again. Redis keeps no trace of what it lost, so the only witnesses are the
nodes: each remembers, per stream, the newest message it acknowledged or delivered
(:class:`SeenSeqs`). When a node reaches Redis again it compares (:func:`verify_epoch`): if
a stream is behind, or another message sits at a remembered seq, the store lost writes and
the node rotates the epoch (once for every node that finds the same loss), so every client
refetches instead of dropping new messages as already seen.

A Redis that restarts empty has no epoch key at all: the first node to come back creates a
new one, as for a new store.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from .redis_typed import text
from .store import new_epoch
from .streams import StreamId

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

#: Streams remembered at most (the most recently written ones; about 150 bytes each).
SEEN_STREAMS = 1000
#: Events read from the channel kept unparsed at most (each no larger than one event).
RECENT_EVENTS = 256
#: Streams checked per round trip.
VERIFY_CHUNK = 200

#: KEYS: the epoch key. ARGV: the epoch the caller read, its replacement. Replaces the epoch
#: only if it is still the one read, so nodes that find the same loss rotate it once; returns
#: the epoch in force.
ROTATE_EPOCH_LUA = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""


class _Stored(msgspec.Struct):
    """The fields of a published event that name its stream and seq."""

    type: str = ""
    seq: int | None = None
    room: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


_decode_stored = msgspec.json.Decoder(_Stored).decode


def stream_of(payload: bytes) -> tuple[str, int] | None:
    """The stream key and seq of a stored message's event, else None."""
    try:
        event = _decode_stored(payload)
    except msgspec.DecodeError:  # not JSON, or not an object
        return None
    if event.seq is None or event.seq <= 0:
        return None
    if event.type == "msg" and event.room is not None:
        return f"r:{event.room}", event.seq
    if event.type == "dm" and event.from_ is not None and event.to is not None:
        return StreamId.dm(event.from_.lower(), event.to.lower()).key, event.seq
    if event.type == "announce":
        return StreamId.announcements().key, event.seq
    return None


class SeenSeqs:
    """Per stream, the newest seq this node acknowledged or delivered, and a fingerprint of
    that message; at most ``limit`` streams, the least recently written forgotten first.

    Why the most recent suffice: a replica holds a prefix of its primary's writes (and a
    snapshot a prefix of history), so whatever Redis lost includes the newest writes, which
    are the ones kept here. The fingerprint (the payload's hash) tells a lost message from a
    new one that took its seq after the failover, when a stream has already caught up.

    Events read from the channel are kept raw, the last ``recent`` of them (any kind), and
    parsed only when Redis is checked: noting one costs a deque append on the delivery path.
    """

    def __init__(self, limit: int = SEEN_STREAMS, recent: int = RECENT_EVENTS) -> None:
        self.limit = limit
        self._seen: dict[str, tuple[int, int]] = {}
        self._recent: deque[bytes] = deque(maxlen=recent)
        #: Remember a published event (stored messages are told from others when parsed:
        #: even a filter here would cost several times the append). The deque's own append,
        #: so noting an event costs no Python call of its own on the delivery path.
        self.note_event: Callable[[bytes], None] = self._recent.append

    def note(self, stream: str, seq: int, payload: bytes) -> None:
        seen = self._seen
        previous = seen.pop(stream, None)
        if previous is not None and previous[0] > seq:
            seen[stream] = previous  # still the newest, and now the most recently written
            return
        seen[stream] = (seq, hash(payload))
        if len(seen) > self.limit:
            del seen[next(iter(seen))]

    def items(self) -> list[tuple[str, int, int]]:
        while self._recent:
            payload = self._recent.popleft()
            found = stream_of(payload)
            if found is not None:
                self.note(found[0], found[1], payload)
        return [(stream, seq, fingerprint) for stream, (seq, fingerprint) in self._seen.items()]

    def clear(self) -> None:
        self._seen.clear()
        self._recent.clear()

    def __len__(self) -> int:
        return len(self._seen) + len(self._recent)


@dataclass(frozen=True, slots=True)
class Loss:
    """A stream where Redis no longer has what this node saw."""

    stream: str
    seen: int
    #: Redis's last seq of the stream.
    stored: int
    #: Another message stands at ``seen`` (the stream caught up with new messages).
    replaced: bool

    def describe(self) -> str:
        if self.replaced:
            return f"{self.stream}: seq {self.seen} now holds another message"
        seen = f"seq {self.seen} was acknowledged or delivered"
        return f"{self.stream}: {seen}, Redis has {self.stored}"


async def find_losses(
    redis: aioredis.Redis, prefix: str, seen: SeenSeqs, *, chunk: int = VERIFY_CHUNK
) -> list[Loss]:
    """Compare what this node saw with ``P seq`` and the messages at those seqs.

    A message missing at its seq while the stream is not behind was pruned (retention), not
    lost: it is not counted.
    """
    items = seen.items()
    losses = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{prefix}seq", [stream for stream, _, _ in part])
            for stream, seq, _ in part:
                pipe.zrangebyscore(f"{prefix}m:{stream}", seq, seq)
            replies = await pipe.execute()
        lasts, found = replies[0], replies[1:]
        for (stream, seq, fingerprint), last, messages in zip(part, lasts, found, strict=True):
            stored = int(last or 0)
            if stored < seq:
                losses.append(Loss(stream, seq, stored, replaced=False))
            elif messages and all(hash(m) != fingerprint for m in messages):
                losses.append(Loss(stream, seq, stored, replaced=True))
    return losses


async def verify_epoch(redis: aioredis.Redis, prefix: str, known: str, seen: SeenSeqs) -> str:
    """The epoch to serve after reaching Redis again; a new one if the store lost writes.

    ``known`` is the epoch this node served before. Another epoch in Redis (the store was
    reset, or another node rotated it already) is adopted: what this node saw belongs to
    the old one. The same epoch with a stream behind what this node saw is rotated with
    :data:`ROTATE_EPOCH_LUA`, so nodes finding the same loss agree on one new epoch.
    """
    key = f"{prefix}epoch"
    await redis.set(key, new_epoch(), nx=True)
    current = text(await redis.get(key))
    if current != known:
        if known:
            log.warning(
                "the store's epoch changed from %s to %s (Redis was reset, or another node "
                "found it lost acknowledged writes): clients refetch their history",
                known,
                current,
            )
        seen.clear()
        return current
    losses = await find_losses(redis, prefix, seen)
    if not losses:
        return current
    rotated = text(await redis.eval(ROTATE_EPOCH_LUA, 1, key, current, new_epoch()))
    log.error(
        "Redis lost acknowledged writes (%s; %d streams behind, a failover to a lagging "
        "replica or a restart from an old snapshot): the store's epoch is now %s, clients "
        "refetch their history",
        losses[0].describe(),
        len(losses),
        rotated,
    )
    seen.clear()
    return rotated
