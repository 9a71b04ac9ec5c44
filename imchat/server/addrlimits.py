"""Per-address budgets shared by all of an address's sessions, and by all nodes of a cluster.

A per-session rate limit is multiplied by the sessions one address opens (32 sessions stored
116 MB in 11 s). Messages and joins therefore also spend a budget of their address (an IPv4
address or an IPv6 /64), and failed logins are counted per address. With one server the
budgets live in memory; on the Redis backend they live in Redis (a token bucket in a Lua
script, timed by the Redis clock), so two nodes do not double what an address may do.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from .ratelimit import FailureLimiter, TokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Addresses whose buckets are remembered at most (least recently used first out).
MAX_ADDRESSES = 65536

TOKEN_BUCKET_LUA = """
-- KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns 1 if a token was taken.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(v[1]), tonumber(v[2])
if tokens == nil then tokens, stamp = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
"""

#: KEYS[1] failure counter; ARGV window (s), limit. INCR+EXPIRE: a fixed window per address.
FAILURE_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class AddressLimits(Protocol):
    async def take(self, addr: str) -> bool:
        """Spend one message/join token of ``addr``; False if it has none left."""
        ...

    async def login_blocked(self, addr: str) -> bool: ...

    async def login_failed(self, addr: str) -> None: ...


class LocalAddressLimits:
    """The budgets of one server process, in memory."""

    def __init__(self, rate: float, burst: int, auth_failures: int, auth_window: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.failures = FailureLimiter(auth_failures, auth_window)

    async def take(self, addr: str) -> bool:
        return self.take_now(addr)

    def take_now(self, addr: str) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(addr)
        if bucket is None:
            bucket = self._buckets[addr] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > MAX_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(addr)
        return bucket.take()

    async def login_blocked(self, addr: str) -> bool:
        return self.failures.blocked(addr)

    async def login_failed(self, addr: str) -> None:
        self.failures.record(addr)


class RedisAddressLimits:
    """The same budgets kept in Redis, shared by every node using ``prefix``."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        rate: float,
        burst: int,
        auth_failures: int,
        auth_window: float,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.rate = rate
        self.burst = burst
        self.auth_failures = auth_failures
        self.auth_window = max(1, int(auth_window))
        self._bucket = redis.register_script(TOKEN_BUCKET_LUA)
        self._failure = redis.register_script(FAILURE_LUA)

    async def take(self, addr: str) -> bool:
        if self.rate <= 0:
            return True
        key = f"{self.prefix}rate:{addr}"
        return bool(await self._bucket(keys=[key], args=[self.rate, self.burst]))

    async def login_blocked(self, addr: str) -> bool:
        if self.auth_failures <= 0:
            return False
        count = await self.redis.get(f"{self.prefix}authfail:{addr}")
        return count is not None and int(count) >= self.auth_failures

    async def login_failed(self, addr: str) -> None:
        if self.auth_failures <= 0:
            return
        key = f"{self.prefix}authfail:{addr}"
        await self._failure(keys=[key], args=[self.auth_window])
