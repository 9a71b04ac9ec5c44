"""A client that never reads is cut off (`slow_consumer`); everyone else keeps up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, RawClient, join

from imchat.protocol import encode_message

pytestmark = pytest.mark.timeout(60)

MAX_BUFFER = 64 * 1024
TEXT = "x" * 3900
BATCH = 8  # requests in flight at once: ~32 KB per batch, under MAX_BUFFER
PROMPT = 2.0  # seconds from the sender's ok to the reader's msg


async def never_reading_client(port: int) -> tuple[RawClient, socket.socket]:
    """A member of lobby whose receive buffer is tiny and who stops reading after joining."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # limit=1024: the stream stops pulling from the socket after ~2 KB, so it really stalls
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    raw = RawClient(reader, writer)
    await raw.hello("slow")
    reply = await raw.request({"type": "join", "room": "lobby", "id": "join"})
    assert reply["type"] == "ok"
    return raw, sock


@pytest.mark.server_config(max_buffer=MAX_BUFFER, rate=0)
async def test_client_that_never_reads_is_cut_off(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    sender = await connect("sender")
    await join(sender, "lobby")
    slow, _sock = await never_reading_client(server.port)
    connect.opened.append(slow)

    received: dict[int, float] = {}
    slow_gone = asyncio.Event()
    progress = asyncio.Event()  # bob received a message
    frames: list[dict[str, Any]] = []
    order: list[int] = []

    async def read_bob() -> None:
        while True:
            event = await bob.next_event(TIMEOUT * 4)
            if event["type"] == "msg":
                assert event["text"] == TEXT and event["from"] == "sender"
                received[event["seq"]] = time.monotonic()
                order.append(event["seq"])
                progress.set()
            elif event["type"] == "offline" and event["nick"] == "slow":
                slow_gone.set()
            elif event["type"] == "parted":
                assert (event["nick"], event["reason"]) == ("slow", "quit")

    reader = asyncio.create_task(read_bob())
    acked: dict[int, float] = {}
    must_have_failed = kernel_send_buffer_max() + MAX_BUFFER + 512 * 1024
    try:
        while len(acked) * len(TEXT) < must_have_failed:
            oks = await asyncio.wait_for(
                asyncio.gather(
                    *(sender.request("say", room="lobby", text=TEXT) for _ in range(BATCH))
                ),
                TIMEOUT,
            )
            for ok in oks:
                acked[ok["seq"]] = time.monotonic()
        # By now the slow client owes more than every buffer between it and the server could
        # hold, so the server has given up on it. It reads at last (with a normal window):
        # intact frames, ending with slow_consumer, then the end of the stream.
        _sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        frames = await slow.recv_until_eof(timeout=TIMEOUT)
        await asyncio.wait_for(slow_gone.wait(), TIMEOUT)

        async def all_received() -> None:
            while len(received) < len(acked):
                progress.clear()
                await progress.wait()

        with contextlib.suppress(TimeoutError):  # the asserts below say what is missing
            await asyncio.wait_for(all_received(), TIMEOUT)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert frames, "nothing at all reached the slow client"
    assert frames[-1] == {
        "type": "error",
        "code": "slow_consumer",
        "message": frames[-1]["message"],
    }
    assert all(f["type"] != "error" for f in frames[:-1])
    # bob got every message, in order, each promptly after its ok
    assert order == sorted(acked) == list(range(1, len(acked) + 1))
    late = {seq: received[seq] - acked[seq] for seq in acked if received[seq] - acked[seq] > PROMPT}
    assert not late, f"messages reached the reading client late: {late}"
    assert not bob.closed and not sender.closed
    users = await bob.request("users")
    assert sorted(users["users"]) == ["bob", "sender"]


def kernel_send_buffer_max() -> int:
    """How much a socket's send buffer may grow to by autotuning (tcp_wmem's maximum)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


class BlockingClient:
    """A client on a thread of its own with a blocking socket, reading as fast as the kernel
    hands it bytes: like a real client in another process, and unlike one on the server's
    own event loop, whose reads wait for the server's turns (and for JSON decoding there)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT * 2)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> dict[str, Any]:
        while True:
            if len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= 4 + size:
                    payload, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    decoded: dict[str, Any] = json.loads(payload)
                    return decoded
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    def frame_skip(self, skip: frozenset[str]) -> dict[str, Any]:
        while (frame := self.frame())["type"] in skip:
            pass
        return frame

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(encode_message(message))
        return self.frame_skip(PRESENCE_AND_JOINS)


PRESENCE_AND_JOINS = frozenset({"online", "offline", "joined"})


async def test_simultaneous_bursts_do_not_cut_off_clients_that_read(server: Any) -> None:
    """With the default limits, a dozen clients each send a full burst (40) of the longest
    messages at once: ~2 MB for every member of the room within one moment, more than
    max_buffer (1 MiB). Every member reads as fast as it can, so nobody is a slow consumer.

    The members are threads with blocking sockets: on the server's event loop they would read
    only between its turns, and a faster server cut them off (run of 2026-11-29)."""
    # The burst is 40 requests; the join spent one of them (rev 2).
    bots, burst, text = 12, 39, "b" * 4000
    payload = b"".join(
        encode_message({"type": "say", "room": "lobby", "text": text, "id": i})
        for i in range(burst)
    )

    def member(nick: str, sends: bool, ready: threading.Barrier) -> list[int]:
        """Join, wait for everyone, send the burst (a bot), then read: the room's seqs."""
        client = BlockingClient(server.port)
        try:
            hello = {"type": "hello", "proto": 1, "nick": nick, "id": "hello"}
            assert client.request(hello)["type"] == "welcome"
            assert client.request({"type": "join", "room": "lobby", "id": "j"})["type"] == "ok"
            ready.wait(TIMEOUT * 2)
            if sends:
                client.send(payload)
            oks, seqs = 0, []
            while oks < (burst if sends else 0) or len(seqs) < bots * burst:
                frame = client.frame_skip(PRESENCE_AND_JOINS)
                assert frame["type"] in ("ok", "msg"), (nick, frame)
                if frame["type"] == "ok":
                    oks += 1
                else:
                    seqs.append(frame["seq"])
            return seqs
        finally:
            client.sock.close()

    ready = threading.Barrier(bots + 1)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=bots + 1) as threads:  # one each: they wait together
        members = [loop.run_in_executor(threads, member, "reader", False, ready)]
        members += [
            loop.run_in_executor(threads, member, f"bot{i}", True, ready) for i in range(bots)
        ]
        seen = await asyncio.wait_for(asyncio.gather(*members), TIMEOUT * 4)
    for seqs in seen:
        assert seqs == list(range(1, bots * burst + 1))
