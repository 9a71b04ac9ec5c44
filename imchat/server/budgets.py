"""Keyed token buckets for what strangers may begin: new rooms, new guest identities.

Each bucket is named by a kind (``roomrate:id``, ``roomrate:addr``, ``newguest:addr``) and a
name (an identity id, an address). With one server they live in memory, the least recently
used of each kind forgotten beyond ``MAX_ADDRESSES`` (a forgotten bucket is a full one, so
the kinds are apart: a flood of one kind cannot push another out). On the Redis backend they
live in Redis under ``<prefix><kind>:<name>`` (the token-bucket script of :mod:`.addrlimits`,
expiring once full again), so the nodes of a cluster share them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from .addrlimits import MAX_ADDRESSES, TOKEN_BUCKET_LUA
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Buckets(Protocol):
    async def take(self, kind: str, name: str, rate: float, burst: int) -> bool:
        """Spend one token of bucket ``kind:name`` (``rate`` tokens/s, ``burst``); False if
        it has none."""
        ...


class LocalBuckets:
    def __init__(self) -> None:
        self._kinds: dict[str, OrderedDict[str, TokenBucket]] = {}

    def __len__(self) -> int:
        return sum(len(buckets) for buckets in self._kinds.values())

    async def take(self, kind: str, name: str, rate: float, burst: int) -> bool:
        buckets = self._kinds.setdefault(kind, OrderedDict())
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = TokenBucket(rate, burst)
            while len(buckets) > MAX_ADDRESSES:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(name)
        return bucket.take()


class RedisBuckets:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.prefix = prefix
        self._bucket = redis.register_script(TOKEN_BUCKET_LUA)

    async def take(self, kind: str, name: str, rate: float, burst: int) -> bool:
        key = f"{self.prefix}{kind}:{name}"
        return bool(await self._bucket(keys=[key], args=[rate, burst]))
