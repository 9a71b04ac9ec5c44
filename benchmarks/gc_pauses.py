"""Full garbage collections with N idle sessions: how long one stalls the loop, with and
without :class:`imchat.server.gcpolicy.FreezePolicy`.

An in-process ``ChatServer`` (SQLite in a temp dir) gets N users from a child process (each
says ``hello`` and joins a room of 100, as in ``idle_tracemalloc.py``); once they are in and
the idle sweep has had two ticks, ``gc.collect(2)`` (what CPython runs on its own each time a
quarter as many objects again have survived) is timed five times. ``gc.callbacks`` records
every automatic collection meanwhile: the longest pause and the number of full passes.

    .venv/bin/python benchmarks/gc_pauses.py 10000
    .venv/bin/python benchmarks/gc_pauses.py 10000 --no-freeze
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from imchat.server.app import ChatServer
from imchat.server.config import ServerConfig

sys.path.insert(0, str(Path(__file__).parent))
from idle_tracemalloc import CLIENT


class Pauses:
    def __init__(self) -> None:
        self.start = 0.0
        self.longest = 0.0
        self.full = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.start = time.perf_counter()
            return
        self.longest = max(self.longest, time.perf_counter() - self.start)
        self.full += info["generation"] == 2


def timed_full_collections(times: int = 5) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        gc.collect(2)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def measure(n: int, freeze: bool) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    config = ServerConfig(
        port=0,
        data_dir=Path(tempfile.mkdtemp(prefix="imchat-gc-")),
        rate=0,
        addr_rate=0,
        max_connections_per_ip=0,
        idle_timeout=3600,
        log_level="warning",
    )
    server = ChatServer(config)
    await server.start()
    if freeze:
        server.gc_policy.start()  # as serve_forever does
    else:
        server.gc_policy.tick = lambda sessions: False  # type: ignore[method-assign]
    pauses = Pauses()
    gc.callbacks.append(pauses)
    child = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port), str(n)])
    try:
        while sum((await server.fanout.member_counts()).values()) < n:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # two sweeps: the population has settled
        gc.callbacks.remove(pauses)
        full = timed_full_collections()
    finally:
        child.kill()
    print(
        f"{n} sessions, freeze {'on' if freeze else 'off'}: while connecting "
        f"{pauses.full} full collections, longest pause {pauses.longest * 1000:.0f} ms; "
        f"a full collection afterwards {', '.join(f'{t:.1f}' for t in full)} ms; "
        f"frozen objects {gc.get_freeze_count()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=10_000)
    parser.add_argument("--no-freeze", action="store_true")
    args = parser.parse_args()
    uvloop.run(measure(args.n, not args.no_freeze))
    os._exit(0)


if __name__ == "__main__":
    main()
