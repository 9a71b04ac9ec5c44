"""Rate limits: a token bucket per session for messages, a failure window per address for logins."""

from __future__ import annotations

import functools
import ipaddress
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: IPv6 clients are limited per /64: one host commonly owns a whole /64 and could otherwise
#: rotate through its addresses to escape every per-address limit.
IPV6_PREFIX = 64


#: Peer addresses whose key is remembered (the most recent): a crowd from one address, or a
#: reconnect storm, parses each address once, not twice per connection.
ADDRESS_CACHE = 4096


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def address_key(host: str) -> str:
    """The unit of per-address limits for a peer address: an IPv4 address or an IPv6 /64.

    Interned: the sessions of one address share one string (idle memory per session)."""
    return sys.intern(_address_key(host))


def _address_key(host: str) -> str:
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

    def full(self) -> bool:
        """Refilled to its burst: a new bucket would behave the same from now on."""
        if self.rate <= 0:
            return True
        return self._tokens + (time.monotonic() - self._stamp) * self.rate >= self.burst


class FailureLimiter:
    """Blocks an address once ``limit`` of its logins failed within the last ``window`` s.

    Only failures count, so any number of users behind one address may log in at once.
    Parallel guesses are bounded by checking :meth:`blocked` again right before each
    expensive check (see ``Hub._authenticate``). Addresses are forgotten once their window
    has passed, and at most ``max_addresses`` are remembered (least recently failed first out).
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
        #: Address -> times of its recent failures, least recently failed address first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def blocked(self, addr: str) -> bool:
        if self.limit <= 0:
            return False
        times = self._failures.get(addr)
        if times is None:
            return False
        cutoff = self._clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[addr]
            return False
        return len(times) >= self.limit

    def record(self, addr: str) -> None:
        """Count a failed login from ``addr``."""
        if self.limit <= 0:
            return
        now = self._clock()
        self._forget_before(now - self.window)
        times = self._failures.get(addr)
        if times is None:
            times = self._failures[addr] = deque(maxlen=self.limit)
        else:
            self._failures.move_to_end(addr)
        times.append(now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def _forget_before(self, cutoff: float) -> None:
        failures = self._failures
        while failures:
            addr, times = next(iter(failures.items()))
            if times and times[-1] > cutoff:
                break
            del failures[addr]
