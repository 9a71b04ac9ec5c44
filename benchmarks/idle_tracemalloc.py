"""Idle memory per connection by allocation site: tracemalloc in an in-process server.

A fresh ``ChatServer`` (SQLite in a temp dir, rate limit off) runs in this process with
tracemalloc on; a child process connects N users, each saying ``hello`` and joining a room of
100, and keeps them open. Printed: Python allocations per connection (after minus before),
and the largest sites. RSS per connection, uvloop and all, is ``fanout.py --scenario idle``.

    .venv/bin/python benchmarks/idle_tracemalloc.py 10000
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import uvloop

from imchat.server.app import ChatServer
from imchat.server.config import ServerConfig

CLIENT = r"""
import asyncio, resource, sys, uvloop
from imchat.protocol import encode_message
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
async def main():
    sem, held = asyncio.Semaphore(64), []
    async def one(i):
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(encode_message({"type": "hello", "proto": 1, "nick": f"i{i}"})
                    + encode_message({"type": "join", "room": f"idle{i // 100}"}))
            await r.read(1)
            held.append((r, w))
    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(3600)
uvloop.run(main())
"""


async def measure(n: int, top: int = 14) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process only
    config = ServerConfig(
        port=0,
        data_dir=Path(tempfile.mkdtemp(prefix="imchat-tm-")),
        rate=0,
        addr_rate=0,
        addr_guests_per_minute=0,  # every client is a new guest from 127.0.0.1
        addr_rooms_per_minute=0,  # ... and 1 in 100 creates its room
        max_connections_per_ip=0,
        idle_timeout=3600,
        log_level="warning",
    )
    server = ChatServer(config)
    await server.start()
    tracemalloc.start(1)
    await asyncio.sleep(0.2)
    before = tracemalloc.take_snapshot()
    child = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port), str(n)])
    try:
        while sum((await server.fanout.member_counts()).values()) < n:
            await asyncio.sleep(0.2)
            if child.poll() is not None:
                raise RuntimeError("the client process ended early")
        await asyncio.sleep(1.5)  # replies written, nothing in flight
        after = tracemalloc.take_snapshot()
    finally:
        child.kill()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"tracemalloc: {total / n:.0f} bytes per connection ({n} users, rooms of 100)")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        print(
            f"{stat.size_diff / n:7.0f} B {stat.count_diff / n:5.2f} blocks  {where}:{frame.lineno}"
        )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    uvloop.run(measure(n))
    os._exit(0)  # the server's writer thread and sessions: nothing to shut down gracefully


if __name__ == "__main__":
    main()
