"""Who may create a room now: a budget per guest identity and per address, and a cap for guests.

A ``join`` that names no existing room creates one, and rooms are durable: without a bound a
stranger created about 20 permanent rooms a second by joining new names, growing the store and
the room list for good. Joining a room that exists costs none of this. Guests (sessions that
did not log in) spend a token bucket of their identity and one of their address (an IPv4
address or IPv6 /64) per room they create, and create rooms only while fewer than
``guest_room_cap`` exist. Accounts are made by an admin and can be removed, so they have no
budget and the cap does not bind them: a stranger filling the cap cannot stop the users the
operator knows. Every transport's join (native, IRC ``JOIN``, ``/ws``, ``imchat send --create``)
goes through :func:`imchat.server.handlers.rooms.on_join`, the one caller.

On the Redis backend the buckets live in Redis (the token-bucket script of
:mod:`.addrlimits`), so the nodes of a cluster share them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from imchat.protocol import ErrorCode, ProtocolError

from .addrlimits import MAX_ADDRESSES, TOKEN_BUCKET_LUA
from .config import ServerConfig
from .peer import Peer, User
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Buckets(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> bool:
        """Spend one token of bucket ``key`` (``rate`` tokens/s, ``burst``); False if none."""
        ...


class LocalBuckets:
    """Buckets in this process, the least recently used of each kind (the part of the key
    before ``:``) forgotten beyond ``MAX_ADDRESSES``. A forgotten bucket is a full one, so the
    kinds are apart: new identities cost a stranger one ``hello`` each, and their flood must
    not push the address's bucket out."""

    def __init__(self) -> None:
        self._kinds: dict[str, OrderedDict[str, TokenBucket]] = {}

    def __len__(self) -> int:
        return sum(len(buckets) for buckets in self._kinds.values())

    async def take(self, key: str, rate: float, burst: int) -> bool:
        buckets = self._kinds.setdefault(key.split(":", 1)[0], OrderedDict())
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(rate, burst)
            while len(buckets) > MAX_ADDRESSES:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket.take()


class RedisBuckets:
    """The same buckets in Redis under ``<prefix>roomrate:``, shared by a cluster's nodes."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.prefix = prefix
        self._bucket = redis.register_script(TOKEN_BUCKET_LUA)

    async def take(self, key: str, rate: float, burst: int) -> bool:
        name = f"{self.prefix}roomrate:{key}"
        return bool(await self._bucket(keys=[name], args=[rate, burst]))


class RoomBudget:
    def __init__(
        self, config: ServerConfig, buckets: Buckets, room_count: Callable[[], Awaitable[int]]
    ) -> None:
        self.config = config
        self.buckets = buckets
        self.room_count = room_count

    async def may_create(self, session: Peer, user: User) -> None:
        """Return if ``user`` may create a room now (spending its tokens), else raise
        ``limit_reached`` (the cap) or ``rate_limited`` with a ``retry_after`` hint."""
        if session.credential is not None:
            return  # an account (or an admin)
        config = self.config
        cap = config.guest_room_cap
        if cap and await self.room_count() >= cap:
            raise ProtocolError(
                ErrorCode.LIMIT_REACHED,
                f"this server has {cap} rooms, the most guests may create; join one of them",
            )
        budgets = (
            (f"id:{user.ident}", config.guest_rooms_per_minute, config.guest_rooms_burst, "you"),
            (
                f"addr:{session.addr}",
                config.addr_rooms_per_minute,
                config.addr_rooms_burst,
                "your address",
            ),
        )
        for key, per_minute, burst, whose in budgets:
            if per_minute <= 0:
                continue
            if not await self.buckets.take(key, per_minute / 60, burst):
                # The bucket holds a whole token again within 60 / per_minute seconds.
                wait = 60 / per_minute
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"too many new rooms from {whose}; try again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
