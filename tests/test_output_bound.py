"""No sequence of requests from guests makes the server hold more than ``max_output_total``.

Guests fill a room with long messages, then each asks for the largest history reply and
never reads. Each reply is held by the server (the kernel takes little: SO_SNDBUF is capped);
together they pass the bound, and the largest owers are cut with ``slow_consumer``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, RawClient

from imchat.protocol import encode_message

MIB = 1024 * 1024


async def non_reader(port: int) -> RawClient:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    return RawClient(reader, writer)


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    """Wait for server state to reach ``condition`` (checked each loop turn, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.01)


@pytest.mark.server_config(
    rate=0, max_output_total=5 * MIB, max_buffer=64 * MIB, socket_send_buffer=16384
)
async def test_unread_replies_are_bounded_in_total(server: Any, connect: Clients) -> None:
    writer = await connect.raw()
    await writer.hello("writer")
    await writer.request({"type": "join", "room": "big", "id": "j"})
    for i in range(500):
        writer.send({"type": "say", "room": "big", "text": chr(0x4E00 + i) * 4000})
    await writer.request({"type": "ping", "id": "p"})
    hub = server.hub
    guests = []
    for i in range(8):
        guest = await non_reader(server.port)
        guest.send({"type": "hello", "proto": 1, "nick": f"g{i}"})
        guest.send({"type": "history", "room": "big", "limit": 100})
        guests.append(guest)

    def holding() -> int:
        return sum(1 for s in hub.sessions if s.nick.startswith("g") and s.owed > 100_000)

    # Each reply is ~1.2 MB (100 x 4000 three-byte characters): eight of them pass 5 MiB.
    await until(lambda: hub.registry.output_cuts + holding() == 8)
    assert hub.registry.output_cuts >= 3
    assert hub.registry.enforce_output_bound() <= 5 * MIB
    # The server still serves a client that reads.
    reader = await connect.raw()
    assert (await reader.request({"type": "ping", "id": 1})) == {"type": "pong", "id": 1}
    for guest in guests:
        guest.writer.transport.abort()


@pytest.mark.server_config(rate=0, max_output_total=0, socket_send_buffer=16384)
async def test_pipelined_large_replies_wait_for_the_client_to_read(
    server: Any, connect: Clients
) -> None:
    """Replies count against max_buffer: 64 pipelined requests for a ~1.2 MB reply do not make
    the server hold 64 replies for one connection that does not read."""
    writer = await connect.raw()
    await writer.hello("writer")
    await writer.request({"type": "join", "room": "big", "id": "j"})
    for i in range(100):
        writer.send({"type": "say", "room": "big", "text": chr(0x4E00 + i) * 4000})
    await writer.request({"type": "ping", "id": "p"})
    guest = await non_reader(server.port)
    guest.send({"type": "hello", "proto": 1, "nick": "piper"})
    guest.send_bytes(
        b"".join(
            encode_message({"type": "history", "room": "big", "limit": 100, "id": i})
            for i in range(64)
        )
    )
    hub = server.hub

    def piper() -> Any:
        return next((s for s in hub.sessions if s.nick == "piper"), None)

    await until(lambda: (s := piper()) is not None and s._writing_paused and s.owed > MIB)
    session = piper()
    assert session is not None
    reply = 1_250_000
    assert session.owed < server.config.max_buffer + 2 * reply
    assert session._inbox  # the rest waits, unanswered, until the client reads
    guest.writer.transport.abort()


class Ower:
    """A connection as the registry sees it: what it owes, and whether it was cut."""

    def __init__(self, owed: int) -> None:
        self.owed = owed
        self.cut = False
        self.addr = "x"

    def fail(self, error: Any) -> None:
        self.cut = True

    def abort(self) -> None:
        pass  # an aborted transport holds its buffer until it is closed: owed stays

    def wake(self) -> None:
        pass


async def test_a_cut_connection_is_not_counted_again_while_it_is_released() -> None:
    """Its memory is counted once, as being released, until it is gone: the next exact count
    neither cuts it again nor anyone else for the same bytes."""
    from imchat.server.registry import MEMORY_PER_BYTE_OWED, Registry

    registry = Registry(asyncio.get_running_loop(), max_output_total=100 * MEMORY_PER_BYTE_OWED)
    big, small, other = Ower(80), Ower(30), Ower(30)
    for ower in (big, small, other):
        registry.add(ower)  # type: ignore[arg-type]
    registry.enforce_output_bound()
    assert (big.cut, small.cut, other.cut) == (True, False, False)
    assert registry.output_cuts == 1
    registry.enforce_output_bound()  # big still owes its 80 until its transport is closed
    assert (small.cut, other.cut) == (False, False)
    assert registry.output_cuts == 1  # not cut (nor logged, nor counted) twice
    registry.remove(big)  # type: ignore[arg-type]
    registry.untrack_output(big)
    assert registry.enforce_output_bound() == 60 * MEMORY_PER_BYTE_OWED


async def test_the_sweep_counts_only_when_the_estimate_could_matter() -> None:
    """An exact count visits every session: the once-a-second sweep makes one only once the
    estimate has reached half the bound (in slices: the estimate comes down to what is owed),
    or someone waits for room (at once, cutting if need be), and never without a bound."""
    from imchat.server.registry import MEMORY_PER_BYTE_OWED, Registry

    counts: list[int] = []
    registry = Registry(asyncio.get_running_loop(), max_output_total=1000)
    registry.add(Ower(100))  # type: ignore[arg-type]
    registry.enforce_output_bound = lambda: counts.append(1) or 0  # type: ignore[method-assign]
    registry.output_estimate = 499
    await registry.sweep_output()
    assert registry.output_estimate == 499
    registry.output_estimate = 500
    await registry.sweep_output()
    assert registry.output_estimate == 100 * MEMORY_PER_BYTE_OWED  # what it owes
    assert counts == []
    registry.wait_for_room(Ower(0))  # type: ignore[arg-type]
    await registry.sweep_output()
    assert counts == [1]
    unbounded = Registry(asyncio.get_running_loop(), max_output_total=0)
    unbounded.enforce_output_bound = lambda: counts.append(2) or 0  # type: ignore[method-assign]
    unbounded.output_estimate = 10**12
    await unbounded.sweep_output()
    assert counts == [1]
    assert unbounded.output_estimate == 10**12


async def test_the_sweeps_count_adds_what_was_written_meanwhile() -> None:
    """A count in slices is the owed plus what was written while it ran (still an upper
    bound); an exact count made meanwhile (a write over the bound) replaces it."""
    from imchat.server.registry import COUNT_SLICE, MEMORY_PER_BYTE_OWED, Registry

    registry = Registry(asyncio.get_running_loop(), max_output_total=1000 * MEMORY_PER_BYTE_OWED)
    owers = [Ower(0) for _ in range(COUNT_SLICE)] + [Ower(100)]
    for ower in owers:
        registry.add(ower)  # type: ignore[arg-type]
    registry.output_estimate = 600 * MEMORY_PER_BYTE_OWED
    counting = asyncio.ensure_future(registry.sweep_output())
    await asyncio.sleep(0)  # the first slice is counted: the count yields
    assert not counting.done()
    registry.wrote(50)
    await counting
    assert registry.output_estimate == 150 * MEMORY_PER_BYTE_OWED
    registry.output_estimate = 600 * MEMORY_PER_BYTE_OWED
    counting = asyncio.ensure_future(registry.sweep_output())
    await asyncio.sleep(0)
    registry.wrote(950)  # the estimate over the bound: an exact count at once, by the write
    assert registry.output_estimate == 100 * MEMORY_PER_BYTE_OWED
    await counting
    assert registry.output_estimate == 100 * MEMORY_PER_BYTE_OWED  # the slices gave way
    assert registry.output_cuts == 0
