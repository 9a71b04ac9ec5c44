"""Every configurable limit, each answered with its error code."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from secfixtures import raw_fixture, start_server_fixture  # noqa: F401
from secutil import Raw, StartServer, wait_for

from imchat.protocol import encode_message
from imchat.server import ratelimit
from imchat.server.session import Session

RawFactory = Callable[..., Awaitable[Raw]]


def only_session(server: object) -> Session:
    sessions = list(server.hub.sessions)  # type: ignore[attr-defined]
    assert len(sessions) == 1
    return sessions[0]


# -- messages per second per session -------------------------------------------------------


class FakeClock:
    """The rate limiter's clock, advanced by the test instead of waited for."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def test_message_rate_is_limited_per_session(
    start_server: StartServer, raw: RawFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "time", clock)
    server = await start_server(rate=1.0, burst=4)
    conn = await raw(server.port)
    await conn.hello("alice")
    await conn.request({"type": "join", "room": "lobby"})  # spends one (rev 2)
    codes = []
    for i in range(4):
        reply = await conn.request({"type": "say", "room": "lobby", "text": f"m{i}"})
        codes.append(reply.get("code", reply["type"]))
    assert codes == ["ok", "ok", "ok", "rate_limited"]
    # Not fatal, and only messages are limited.
    for _ in range(10):
        assert (await conn.request({"type": "ping"}))["type"] == "pong"
    clock.offset += 1.0  # one token back at 1/s
    reply = await conn.request({"type": "say", "room": "lobby", "text": "again"})
    assert reply["type"] == "ok"
    # Another session of the same user has its own bucket.
    other = await raw(server.port)
    await other.hello("bob")
    await other.request({"type": "join", "room": "lobby"})
    assert (await other.request({"type": "say", "room": "lobby", "text": "x"}))["type"] == "ok"


# -- connections per address --------------------------------------------------------------


async def test_connections_per_address_are_limited(
    start_server: StartServer, raw: RawFactory
) -> None:
    server = await start_server(max_connections_per_ip=3)
    conns = [await raw(server.port) for _ in range(3)]
    for i, conn in enumerate(conns):
        assert (await conn.hello(f"user{i}"))["type"] == "welcome"
    extra = await raw(server.port)
    frames = await extra.until_closed()
    assert [(f["type"], f["code"]) for f in frames] == [("error", "rate_limited")]
    # Another address is not affected.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, local_addr=("127.0.0.2", 0)
    )
    elsewhere = Raw(reader, writer)
    assert (await elsewhere.hello("remote"))["type"] == "welcome"
    await elsewhere.close()
    # A closed connection frees its place.
    await conns[0].close()
    await wait_for(lambda: server.hub.connections_per_addr.get("127.0.0.1") == 2)
    again = await raw(server.port)
    # (a new nick: user0's guest identity is held for it, rev 2)
    assert (await again.hello("user3"))["type"] == "welcome"
    for conn in (*conns[1:], again):
        await conn.close()
    await wait_for(lambda: not server.hub.connections_per_addr and not server.hub.sessions)


# -- the hello deadline (slowloris) ---------------------------------------------------------


async def test_connection_without_hello_is_closed(
    start_server: StartServer, raw: RawFactory
) -> None:
    server = await start_server(hello_timeout=0.5)
    silent = await raw(server.port)
    # A slowloris: keeps trickling bytes of a hello that would complete only after 5 s.
    trickler = await raw(server.port)
    identified = await raw(server.port)
    await identified.hello("alice")
    frame = encode_message({"type": "hello", "proto": 1, "nick": "slow", "client": "x" * 40})
    frames = []
    for byte in frame:
        trickler.send_bytes(bytes([byte]))
        try:
            # A byte every 50 ms at most: the wait is for the close this test expects.
            frames.append(await trickler.recv(timeout=0.05))
        except TimeoutError:
            continue
        except EOFError:
            break
    assert [(f["type"], f["code"]) for f in frames] == [("error", "idle_timeout")]
    assert trickler.eof, "the trickled hello completed before the deadline closed it"
    frames = await silent.until_closed(timeout=3)
    assert [(f["type"], f["code"]) for f in frames] == [("error", "idle_timeout")]
    # Pings do not extend the deadline either: only hello counts.
    pinger = await raw(server.port)
    for _ in range(2):
        assert (await pinger.request({"type": "ping"}))["type"] == "pong"
    frames = await pinger.until_closed(timeout=3)
    assert [(f["type"], f["code"]) for f in frames] == [("error", "idle_timeout")]
    assert (await identified.request({"type": "ping"}))["type"] == "pong"


# -- idle timeout ------------------------------------------------------------------------------


async def test_idle_session_is_closed(start_server: StartServer, raw: RawFactory) -> None:
    server = await start_server(idle_timeout=0.8)
    # busy starts first: had pings not kept it alive, it would be closed before idle.
    busy = await raw(server.port)
    await busy.hello("busy")
    idle = await raw(server.port)
    await idle.hello("idle")
    frames = []
    while not idle.eof:
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
        with contextlib.suppress(TimeoutError, EOFError):
            # A ping every 100 ms at most: the wait is for idle's close.
            frames.append(await idle.recv(timeout=0.1))
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["idle_timeout"]
    assert frames[-1]["type"] == "error"
    assert (await busy.request({"type": "ping"}))["type"] == "pong"


# -- max frame ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1001, 2**32 - 1])
async def test_oversized_frame_is_refused_on_its_header(
    start_server: StartServer, raw: RawFactory, length: int
) -> None:
    server = await start_server(max_frame=1000)
    conn = await raw(server.port)
    conn.send_bytes(length.to_bytes(4, "big"))  # the body never comes: not needed
    frames = await conn.until_closed()
    assert [(f["type"], f["code"]) for f in frames] == [("error", "frame_too_large")]


async def test_frame_of_exactly_max_frame_is_accepted(
    start_server: StartServer, raw: RawFactory
) -> None:
    server = await start_server(max_frame=1000)
    conn = await raw(server.port)
    payload = b'{"type":"ping","id":"p"}'
    conn.send_payload(payload + b" " * (1000 - len(payload)))
    assert (await conn.recv())["type"] == "pong"


# -- max text -----------------------------------------------------------------------------------


async def test_text_longer_than_max_text_is_refused(
    start_server: StartServer, raw: RawFactory
) -> None:
    server = await start_server(max_text=10)
    conn = await raw(server.port)
    welcome = await conn.hello("alice")
    assert welcome["max_text"] == 10
    await conn.request({"type": "join", "room": "lobby"})
    ok = await conn.request({"type": "say", "room": "lobby", "text": "é" * 10})
    assert ok["type"] == "ok"
    for request in (
        {"type": "say", "room": "lobby", "text": "é" * 11},
        {"type": "dm", "to": "alice", "text": "x" * 11},
        {"type": "topic", "room": "lobby", "text": "x" * 11},
    ):
        reply = await conn.request(request)
        assert reply["code"] == "bad_text", reply
    assert (await conn.request({"type": "ping"}))["type"] == "pong"  # not fatal


# -- memory an unidentified peer can make the server hold --------------------------------------


async def test_pre_hello_input_never_exceeds_one_frame(
    start_server: StartServer, raw: RawFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak = 0
    real = Session.buffer_updated

    def measured(self: Session, nbytes: int) -> None:
        nonlocal peak
        real(self, nbytes)
        peak = max(peak, self.held)

    monkeypatch.setattr(Session, "buffer_updated", measured)
    server = await start_server(max_frame=1024)
    conn = await raw(server.port)
    # 1 MiB of pipelined pings, read as they are answered: served completely, held in slices.
    ping = encode_message({"type": "ping"})
    count = (1 << 20) // len(ping)
    conn.send_bytes(ping * count)
    for _ in range(count):
        frame = await conn.recv()
        assert frame["type"] == "pong", frame
    assert 0 < peak <= 1024 + 4
    # A frame as large as allowed, sent in one piece, still fits.
    payload = b'{"type":"ping"}'
    conn.send_payload(payload + b" " * (1024 - len(payload)))
    assert (await conn.recv())["type"] == "pong"
    assert peak <= 1024 + 4


async def test_identified_sessions_pipeline_without_stalling(
    start_server: StartServer, raw: RawFactory
) -> None:
    server = await start_server(rate=0, max_frame=1024)
    conn = await raw(server.port)
    await conn.hello("alice")
    await conn.request({"type": "join", "room": "lobby"})
    n = 2000
    conn.send_bytes(
        b"".join(
            encode_message({"type": "say", "room": "lobby", "text": f"m{i}", "id": i})
            for i in range(n)
        )
    )
    ids = []
    while len(ids) < n:
        frame = await conn.recv()
        if frame["type"] == "ok":
            ids.append(frame["id"])
    assert ids == list(range(n))
    # The last ok is written after its batch was handled and released: nothing is held.
    assert only_session(server).held == 0


async def test_peer_that_does_not_read_is_not_served_faster_than_it_reads(
    start_server: StartServer,
) -> None:
    server = await start_server(max_frame=1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    conn = Raw(reader, writer)
    await wait_for(lambda: len(server.hub.sessions) == 1)  # type: ignore[union-attr]
    session = only_session(server)
    assert session.transport is not None
    session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # Each is answered hello_required, a reply twice its size; none is read for now.
    request = encode_message({"type": "join", "room": "lobby"})
    count = (1 << 20) // len(request)
    writer.write(request * count)
    # Both paused: the session does nothing more until its client reads, so what it holds
    # now is the most it will hold.
    await wait_for(lambda: session.writing_paused and session.reading_paused)
    assert session.held <= 1024 + 4
    assert session.owed <= 2 * 65536 + 1024
    assert not session.closing
    for _ in range(count):  # every reply arrives once the client reads
        assert (await conn.recv())["code"] == "hello_required"
    await conn.close()
