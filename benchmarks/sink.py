#!/usr/bin/env python3
"""A listener that accepts connections and holds them: the baseline of ``report.py``'s pairs.

    python benchmarks/sink.py

Prints one JSON line (``{"port": P}``, on 127.0.0.1), accepts and holds every connection,
discarding what arrives, until its stdin closes; then prints ``{"accepted": N}`` and exits.

Why: this machine has a thread of its own that walks every socket every 1-3 s: with 95,000
loopback sockets open (no imchat anywhere) it burnt ~100 ms of CPU a pass on either core,
and an imchat node that shared the core stood still meanwhile. A "flat in idle users"
measurement without the idle users (``--wide``'s, the sweep's) holds the same connections
open here (``crowd.py --plain``, ``report.held_sockets``), so the machine has the same
sockets in both phases and the pair compares what the idle *users* cost
(``benchmarks/README.md``, round 13).
"""

from __future__ import annotations

import asyncio
import json
import sys

from fanout import raise_fd_limit
from serverproc import HOST


class Held(asyncio.Protocol):
    """One accepted connection, kept until the peer goes or the sink exits."""

    accepted = 0

    def __init__(self, held: set[asyncio.BaseTransport]) -> None:
        self.held = held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.held.add(transport)
        Held.accepted += 1

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.held.discard(self.transport)


async def sink() -> None:
    held: set[asyncio.BaseTransport] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Held(held), HOST, 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(json.dumps({"accepted": Held.accepted}), flush=True)
    for transport in list(held):
        transport.close()


def main() -> None:
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(sink())
    else:
        uvloop.run(sink())


if __name__ == "__main__":
    main()
