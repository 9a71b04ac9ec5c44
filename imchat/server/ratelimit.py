"""Rate limits: a token bucket per session for messages, a failure window per address for logins."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: IPv6 clients are limited per /64: one host commonly owns a whole /64 and could otherwise
#: rotate through its addresses to escape every per-address limit.
IPV6_PREFIX = 64


def address_key(host: str) -> str:
    """The unit of per-address limits for a peer address: an IPv4 address or an IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (e.g. a Unix socket path): limit it as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class TokenBucket:
    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; a disabled bucket (rate 0) always allows."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class FailureLimiter:
    """At most ``limit`` login attempts per address in flight or failed within ``window`` s.

    An attempt is counted before its credentials are checked and forgiven if they were right,
    so a burst of parallel guesses is bounded as tightly as a sequence of them. Addresses are
    forgotten once their window has passed, and at most ``max_addresses`` are remembered.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_addresses: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        #: Address -> times of its counted attempts, least recently touched address first.
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def acquire(self, addr: str) -> bool:
        """Count an attempt from ``addr``; False (and nothing counted) if it is over the limit."""
        if self.limit <= 0:
            return True
        now = self._clock()
        self._forget_before(now - self.window)
        times = self._attempts.get(addr)
        if times is None:
            times = self._attempts[addr] = deque()
        else:
            self._attempts.move_to_end(addr)
            while times and times[0] <= now - self.window:
                times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        while len(self._attempts) > self.max_addresses:
            self._attempts.popitem(last=False)
        return True

    def release(self, addr: str) -> None:
        """Forgive one counted attempt: it succeeded."""
        times = self._attempts.get(addr)
        if times:
            times.pop()
            if not times:
                del self._attempts[addr]

    def _forget_before(self, cutoff: float) -> None:
        attempts = self._attempts
        while attempts:
            addr, times = next(iter(attempts.items()))
            if times and times[-1] > cutoff:
                break
            del attempts[addr]
