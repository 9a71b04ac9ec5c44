"""Open connections per client address (IPv4, or IPv6 /64), for ``max_connections_per_ip``.

The native listener (through :class:`imchat.server.registry.Registry`) and the HTTP front end
each keep one: the limit holds on each port.
"""

from __future__ import annotations


class AddressCounts:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def admit(self, addr: str, limit: int) -> bool:
        """Count a connection just accepted from ``addr``, unless it has ``limit`` (0: none)."""
        count = self.counts.get(addr, 0)
        if limit and count >= limit:
            return False
        self.counts[addr] = count + 1
        return True

    def add(self, addr: str) -> int:
        """Count a connection from ``addr`` whatever the limit; how many it has now."""
        count = self.counts[addr] = self.counts.get(addr, 0) + 1
        return count

    def release(self, addr: str) -> None:
        left = self.counts.pop(addr, 1) - 1
        if left > 0:
            self.counts[addr] = left
