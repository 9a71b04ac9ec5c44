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

from fanout import raise_fd_limit, run_with_uvloop
from serverproc import HOST


class Sink:
    """The connections open now, and how many were ever accepted."""

    def __init__(self) -> None:
        self.open: set[asyncio.BaseTransport] = set()
        self.accepted = 0


class Held(asyncio.Protocol):
    """One accepted connection, kept until the peer goes or the sink exits."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sink.open.add(transport)
        self.sink.accepted += 1

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.open.discard(self.transport)


async def sink() -> None:
    state = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Held(state), HOST, 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(json.dumps({"accepted": state.accepted}), flush=True)
    for transport in list(state.open):
        transport.close()


def main() -> None:
    raise_fd_limit()
    run_with_uvloop(sink())


if __name__ == "__main__":
    main()
