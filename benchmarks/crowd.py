#!/usr/bin/env python3
"""Idle users from one process of at most 20,000 sockets, for ``report.py --wide``.

    python benchmarks/crowd.py --ports P1,P2,P3 --source 127.0.0.2 --first 0 --users 16667

Connects ``--users`` imchat guests (``<--nick-prefix><i>`` for ``i`` from ``--first``) to
the servers at ``--ports`` on 127.0.0.1, round-robin, every socket bound to ``--source``
before it connects; each joins a room of ``--room-size`` (``<--room-prefix><i // size>``).
Prints one JSON line (users, connect seconds, lost), holds the connections (discarding what
arrives) until its stdin closes, prints a second line (lost while held) and exits.

``--plain``: the same sockets, connected and held but never a user (no ``hello``), for the
baseline of ``report.py``'s "flat in idle users" pairs (the ports are ``sink.py``
processes'); closed with a reset, so no socket lingers in ``TIME_WAIT`` into the
measurement that follows.

Why a process of its own and a source address of its own: this machine lets a process hold
at most 20,000 descriptors (the hard limit, which cannot be raised here), and one source
address reaches one server port through at most ``ip_local_port_range`` ports (~28,000), so
50,000 connections need several processes, and many connections to one port several
addresses (all of 127/8 is loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import cast

from fanout import raise_fd_limit, run_with_uvloop
from loadgen import ImchatDriver, Stats, connect_from, connect_many
from serverproc import ServerProc


class Plain(asyncio.Protocol):
    """A connection that is only held: counts itself lost if the other end closes it."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.BaseTransport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.stats.raw_bytes += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.stats.lost += 1

    def reset(self) -> None:
        self.closing = True
        cast(asyncio.Transport, self.transport).abort()


#: ``SO_LINGER`` on, timeout 0: ``close`` sends a reset and leaves nothing in ``TIME_WAIT``.
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


async def plain(args: argparse.Namespace, stats: Stats, ports: list[int]) -> list[Plain]:
    """``--users`` sockets from ``--source`` to ``ports`` round-robin, ``--parallel`` per port
    in flight."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.parallel * len(ports))

    async def one(port: int) -> Plain:
        async with sem:
            sock = await connect_from(args.source or "0.0.0.0", port)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                _, held = await loop.create_connection(lambda: Plain(stats), sock=sock)
            except BaseException:
                sock.close()
                raise
            return held

    return list(await asyncio.gather(*(one(ports[i % len(ports)]) for i in range(args.users))))


async def crowd(args: argparse.Namespace) -> None:
    stats = Stats()
    ports = [int(p) for p in args.ports.split(",")]
    t0 = time.monotonic()
    if args.plain:
        held = await plain(args, stats, ports)
        await hold(args, stats, len(held), t0)
        for conn in held:
            conn.reset()
        return
    drivers = []
    for port in ports:
        # Only the port is used: the server runs elsewhere (started by report.py).
        node = ServerProc("node", [], log_path=Path(os.devnull), port=port)
        driver = ImchatDriver("imchat", node)
        driver.source = args.source
        drivers.append(driver)
    specs: list[list[tuple[str, list[str], bool]]] = [[] for _ in ports]
    for i in range(args.first, args.first + args.users):
        room = f"{args.room_prefix}{i // args.room_size}"
        specs[i % len(ports)].append((f"{args.nick_prefix}{i}", [room], False))
    groups = await asyncio.gather(
        *(
            connect_many(d, stats, s, parallel=args.parallel)
            for d, s in zip(drivers, specs, strict=True)
        )
    )
    clients = [c for group in groups for c in group]
    await hold(args, stats, len(clients), t0)
    for client in clients:
        client.abort()


async def hold(args: argparse.Namespace, stats: Stats, users: int, t0: float) -> None:
    """Say how many are connected, then hold them until stdin closes and say what was lost."""
    hello = {"users": users, "source": args.source, "connect_s": time.monotonic() - t0}
    print(json.dumps({**hello, "lost": stats.lost}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps({"lost": stats.lost, "bytes": stats.raw_bytes}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ports", required=True, help="comma list of server ports on 127.0.0.1")
    p.add_argument("--source", default=None, help="local address to bind (e.g. 127.0.0.2)")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--nick-prefix", default="w")
    p.add_argument("--parallel", type=int, default=16, help="handshakes in flight per server")
    p.add_argument("--room-prefix", default="idle")
    p.add_argument("--plain", action="store_true", help="sockets only, never a user (sink.py)")
    args = p.parse_args()
    raise_fd_limit()
    run_with_uvloop(crowd(args))


if __name__ == "__main__":
    main()
