"""Deliveries per second: two Redis-backed nodes against one node with the embedded store.

Every run has the same clients: receivers and senders, all in one room. With two nodes,
half of each sit on either node, so every message crosses Redis pub/sub to reach the other
half. A third run, one node on Redis, separates the cost of Redis from the cost of spreading.

    python benchmarks/cluster.py [--receivers 40] [--senders 4] [--messages 2500] [--repeat 3]

A delivery is one ``msg`` event read by one receiver; the clock runs from the first ``say`` to
the last expected delivery. Everything listens on 127.0.0.1; each run is bounded by
``--timeout``. Needs a Redis at ``--redis`` (the run uses its own key prefix and deletes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct(">I")


def frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


class BenchClient(asyncio.Protocol):
    """A minimal imchat client: hello, join, then count ``msg`` events and ``ok`` replies."""

    def __init__(self, nick: str, room: str, expected: int) -> None:
        self.nick = nick
        self.room = room
        self.expected = expected
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.received = 0
        self.acked = 0
        self.window = asyncio.Event()
        self.last_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send({"type": "hello", "proto": 1, "nick": self.nick, "id": "hello"})
        self.send({"type": "join", "room": self.room, "id": "join"})

    def send(self, message: dict[str, object]) -> None:
        assert self.transport is not None
        self.transport.write(frame(message))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            body = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            self.handle(body)
        del buffer[:offset]

    def handle(self, body: bytes) -> None:
        if body.startswith(b'{"type":"msg"'):
            self.received += 1
            if self.received == self.expected and not self.done.done():
                self.last_at = time.perf_counter()
                self.done.set_result(None)
            return
        message = json.loads(body)
        kind = message.get("type")
        if kind == "ok" and message.get("id") == "join":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "ok":
            self.acked += 1
            self.window.set()
        elif kind == "error":
            error = RuntimeError(f"{self.nick}: {message.get('code')}: {message.get('message')}")
            for future in (self.ready, self.done):
                if not future.done():
                    future.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"{self.nick}: connection lost")
        for future in (self.ready, self.done):
            if not future.done():
                future.set_exception(error)


async def open_client(port: int, nick: str, room: str, expected: int) -> BenchClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: BenchClient(nick, room, expected), "127.0.0.1", port
    )
    await client.ready
    return client


async def send_all(client: BenchClient, count: int, in_flight: int) -> None:
    """Say ``count`` messages keeping at most ``in_flight`` unacknowledged."""
    sent = 0
    while sent < count:
        while sent - client.acked >= in_flight:
            client.window.clear()
            await client.window.wait()
        client.send({"type": "say", "room": client.room, "text": f"m{sent}", "id": sent})
        sent += 1


@dataclass
class Result:
    name: str
    deliveries: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


async def run_load(
    name: str, ports: list[int], *, receivers: int, senders: int, messages: int, timeout: float
) -> Result:
    total = senders * messages
    expected = total  # every message reaches every receiver
    room = "bench"
    tag = uuid.uuid4().hex[:6]
    recv_clients = [
        await open_client(ports[i % len(ports)], f"r{tag}{i}", room, expected)
        for i in range(receivers)
    ]
    # Senders are members too (they must be, to say); they count their own copies.
    send_clients = [
        await open_client(ports[i % len(ports)], f"s{tag}{i}", room, expected)
        for i in range(senders)
    ]
    start = time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(send_all(c, messages, 32) for c in send_clients),
                *(c.done for c in recv_clients),
            ),
            timeout,
        )
    finally:
        for client in recv_clients + send_clients:
            if client.transport is not None:
                client.transport.close()
    end = max(c.last_at for c in recv_clients)
    return Result(name, expected * receivers, end - start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """A server subprocess on a free port; its log goes to a file next to its data."""

    def __init__(self, args: list[str], data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        self.port = free_port()
        self.log = data_dir / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imchat",
                    "server",
                    "--port",
                    str(self.port),
                    "--rate",
                    "0",
                    "--log-level",
                    "warning",
                    "--data-dir",
                    str(data_dir),
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.log.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not start listening") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def with_nodes(
    name: str, node_args: list[list[str]], base: Path, load: dict[str, int | float]
) -> Result:
    nodes = [Node(args, base / f"{name}-{i}") for i, args in enumerate(node_args)]
    try:
        for node in nodes:
            await node.wait_listening()
        return await run_load(name, [n.port for n in nodes], **load)  # type: ignore[arg-type]
    finally:
        for node in nodes:
            node.stop()


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=40)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--messages", type=int, default=2500, help="per sender")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setup; best is kept")
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    load = {
        "receivers": args.receivers,
        "senders": args.senders,
        "messages": args.messages,
        "timeout": args.timeout,
    }
    prefix = f"imchat-bench-{uuid.uuid4().hex[:8]}:"
    redis_args = ["--redis", args.redis, "--redis-prefix", prefix]
    setups = [
        ("embedded, 1 node", [[]]),
        ("redis, 1 node", [redis_args]),
        ("redis, 2 nodes", [redis_args, redis_args]),
    ]
    best: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="imchat-bench-") as tmp:
        base = Path(tmp)
        try:
            # Interleaved, so a noisy neighbour on a shared machine hurts every setup alike.
            for round_ in range(args.repeat):
                for name, node_args in setups:
                    run_dir = base / f"run{round_}"
                    result = await with_nodes(name, node_args, run_dir, load)
                    delete_prefix(args.redis, prefix)
                    if name not in best or result.rate > best[name].rate:
                        best[name] = result
        finally:
            delete_prefix(args.redis, prefix)
    print(
        f"{args.senders} senders x {args.messages} messages into one room, "
        f"{args.receivers} receivers; best of {args.repeat}"
    )
    for name, _ in setups:
        result = best[name]
        print(
            f"{name:>18}: {result.deliveries:>8} deliveries in {result.seconds:6.2f} s"
            f" = {result.rate:>10,.0f} /s"
        )
    base_rate = best[setups[0][0]].rate
    for name, _ in setups[1:]:
        print(f"{name} / embedded, 1 node: {best[name].rate / base_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
