"""Reconnect storm: N clients back and resynced after a server restart, and accept overflows.

    python benchmarks/storm.py [--clients 5000] [--room-size 100] [--backlog 4096]

N clients connect (each a guest in a room of ``--room-size``, one message said per room), then
the server is restarted on the same port and data dir (SIGTERM, start again). Every client
sees ``shutting_down``, waits as the client library does (:class:`imchat.client.session.Backoff`,
jittered exponential), reconnects, says hello (with its ``resume`` when the server gave one),
rejoins its room and asks for ``history`` after the last seq it saw: it is back once that
reply is in. Reported: the time from the restart (SIGTERM) to each client being back (p50,
p99, max), connection attempts refused, and the kernel's ``TcpExtListenOverflows`` counted
during the storm (``/proc/net/netstat``). Everything runs on 127.0.0.1.

Each guest's arrival is announced to everyone online (until presence is scoped, issue 9), so
the guest storm costs N^2 events; ``--as-sessions`` makes every client a session of one
account to measure the rest of the path alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import raise_fd_limit, run_with_uvloop
from loadgen import percentile
from serverproc import HOST, LOOPBACK_CROWD, ServerProc, free_port, imchat_command

from imchat.client.session import Backoff

HEADER = struct.Struct(">I")


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


class Frames:
    """Reads whole frames from a stream; only the awaited reply is decoded (the generator must
    not be the bottleneck: the presence events of thousands of arrivals are skipped unread)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def next_bytes(self) -> bytes:
        header = await self.reader.readexactly(4)
        (length,) = HEADER.unpack(header)
        return await self.reader.readexactly(length)

    async def reply(self, rid: str) -> dict[str, Any]:
        marker = f'"id":"{rid}"'.encode()
        while True:
            body = await self.next_bytes()
            if marker in body:
                message = dict(json.loads(body))
                if message.get("id") == rid:
                    return message


class StormClient:
    def __init__(self, index: int, room_size: int, token: str | None = None) -> None:
        self.nick = f"s{index}" if token is None else "admin"
        self.token = token
        self.room = f"storm{index // room_size}"
        self.last_seq = 0
        self.resume: str | None = None
        self.refused = 0
        #: Connects that took a second or more: a SYN retransmitted, as happens when the
        #: server's accept queue is full (the kernel drops the SYN or the final ACK).
        self.slow_connects = 0
        self.writer: asyncio.StreamWriter | None = None
        self.frames: Frames | None = None

    async def session(self) -> None:
        """Connect, hello, join and catch up; raises if any step fails."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(HOST, PORT, limit=1 << 24)
        if time.monotonic() - started >= 0.9:
            self.slow_connects += 1
        self.writer, self.frames = writer, Frames(reader)
        hello: dict[str, Any] = {"type": "hello", "proto": 1, "nick": self.nick, "id": "h"}
        if self.resume is not None:
            hello["resume"] = self.resume
        if self.token is not None:
            hello["token"] = self.token
        writer.write(frame(hello))
        welcome = await self.frames.reply("h")
        if welcome.get("type") != "welcome":
            raise ConnectionError(f"hello refused: {welcome}")
        self.resume = welcome.get("resume", self.resume)
        writer.write(frame({"type": "join", "room": self.room, "id": "j"}))
        joined = await self.frames.reply("j")
        if joined.get("type") != "ok":
            raise ConnectionError(f"join refused: {joined}")
        history = {"type": "history", "room": self.room, "after": self.last_seq, "id": "y"}
        writer.write(frame(history))
        caught_up = await self.frames.reply("y")
        for message in caught_up.get("messages", []):
            self.last_seq = max(self.last_seq, int(message["seq"]))

    async def wait_closed(self) -> None:
        """Read until the server closes (after ``shutting_down``)."""
        assert self.frames is not None
        try:
            while await self.frames.reader.read(1 << 16):
                pass
        except ConnectionError:
            pass
        if self.writer is not None:
            self.writer.close()

    async def come_back(self, backoff: Backoff) -> float:
        """Reconnect as the client library does; the monotonic time it was back."""
        attempt = 0
        while True:
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
            try:
                await asyncio.wait_for(self.session(), 60)
                return time.monotonic()
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                self.refused += 1
                if self.writer is not None:
                    self.writer.close()


PORT = 0


def storm_server(data_dir: Path, port: int, backlog: int, log: Path) -> ServerProc:
    """The server on a fixed port (a restart must come back where the clients reconnect)."""
    argv = [
        *imchat_command(),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--listen-backlog",
        str(backlog),
        "--max-connections-per-ip",
        "0",
        *LOOPBACK_CROWD,
        "--idle-timeout",
        "600",
    ]
    return ServerProc("imchat", argv, log_path=log, port=port, data_dir=data_dir)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    global PORT
    PORT = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="imchat-storm-"))
    data_dir = workdir / "data"
    server = storm_server(data_dir, PORT, args.backlog, workdir / "server.log")
    try:
        await server.start(30.0)
        token = (data_dir / "admin.token").read_text().strip() if args.as_sessions else None
        clients = [StormClient(i, args.room_size, token) for i in range(args.clients)]
        setup = time.monotonic()
        for start in range(0, len(clients), 200):  # connect in steps: a calm first start
            await asyncio.gather(*(c.session() for c in clients[start : start + 200]))
        setup = time.monotonic() - setup
        # One message per room, so a resync has something to fetch.
        for c in clients[:: args.room_size]:
            assert c.writer is not None and c.frames is not None
            c.writer.write(frame({"type": "say", "room": c.room, "text": "before", "id": "s"}))
            await c.frames.reply("s")
        closed = [asyncio.create_task(c.wait_closed()) for c in clients]
        overflows_before = listen_overflows()
        restart = time.monotonic()
        server.stop(60.0)
        await asyncio.gather(*closed)
        server = storm_server(data_dir, PORT, args.backlog, workdir / "server-restarted.log")
        # Started while the clients already try to come back, as in a real restart.
        started = asyncio.create_task(server.start(60.0))
        backoff = Backoff()
        back = await asyncio.gather(*(c.come_back(backoff) for c in clients))
        await started
        overflows = listen_overflows() - overflows_before
        waits = sorted(t - restart for t in back)
        return {
            "clients": args.clients,
            "as_sessions": args.as_sessions,
            "backlog": args.backlog,
            "setup_s": round(setup, 2),
            "p50_s": round(percentile(waits, 50), 2),
            "p99_s": round(percentile(waits, 99), 2),
            "max_s": round(waits[-1], 2),
            "refused_attempts": sum(c.refused for c in clients),
            # Machine-wide counter: other programs' overflows during the run count too.
            "listen_overflows": overflows,
            "slow_connects": sum(c.slow_connects for c in clients),
            # Every room had one message said while its members were connected: each client
            # that is back has fetched it.
            "resynced": sum(1 for c in clients if c.last_seq >= 1),
        }
    finally:
        server.stop(20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--room-size", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--as-sessions",
        action="store_true",
        help="every client a session of the admin account: one user, so no presence storm "
        "(isolates accepting, handshakes and resync from presence fan-out)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    result = run_with_uvloop(asyncio.wait_for(run(args), args.timeout))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
