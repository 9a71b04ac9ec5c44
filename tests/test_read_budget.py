"""Reads and read markers spend a budget of their own: ``--read-rate`` after ``--read-burst``.

``history``, ``users`` and ``markers`` (each a store or cluster read) and ``mark`` (a store
write per forward move) cost nothing, so one connection could repeat them without bound.
Now each spends a token of the session's read bucket; an empty bucket is ``rate_limited``
and nothing else happens. The burst is large because the client library sends them in a
burst at every (re)connect: a history per conversation, the markers, the users; a
reconnecting client with 50 rooms is measured below. Each read also spends a bucket shared
by the guests of its address, or by its account's sessions (``--addr-read-*``): sessions and
guest nicks no longer multiply the budget. Both backends (``IMCHAT_TEST_BACKEND=redis``);
IRC ``WHOIS`` in ``tests/irc/test_irc_read_budget.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, RawClient, Servers

from imchat.client import ServerError
from imchat.client.session import (
    ChatSession,
    ConnectionLike,
    ConvKey,
    SendFailed,
    SessionEvent,
    State,
)
from imchat.protocol import Markers, Users
from imchat.protocol.events import MsgEvent
from imchat.server.accounts import add_user
from imchat.server.config import ServerConfig
from imchat.server.store import Draft
from imchat.server.streams import StreamId

#: Messages and joins unbounded here, so only the read budget refuses.
OPEN = {"rate": 0, "addr_rate": 0, "read_rate": 0.001, "read_burst": 3}
#: The per-session budget out of the way, the shared one small: its guests' address's (or its
#: account's) budget is what refuses.
SHARED = {"rate": 0, "addr_rate": 0, "addr_read_rate": 0.001, "addr_read_burst": 5}
PASSWORD = "correct horse"

READS: dict[str, dict[str, Any]] = {
    "history": {"type": "history", "room": "lobby"},
    "users": {"type": "users"},
    "markers": {"type": "markers"},
}


async def codes(raw: RawClient, body: dict[str, Any], count: int) -> list[str]:
    for i in range(count):
        raw.send({**body, "id": i})
    got: list[str] = []
    while len(got) < count:
        frame = await raw.recv()
        if "id" in frame:
            got.append(str(frame.get("code", "ok")))
    return got


async def test_reads_are_bounded_per_session(servers: Servers, connect: Clients) -> None:
    server = await servers.start(**OPEN)
    for kind, body in READS.items():
        raw = await connect.raw(port=server.port)
        await raw.hello(f"reader{kind}")
        await raw.request({"type": "join", "room": "lobby", "id": "j"})
        assert await codes(raw, body, 5) == ["ok"] * 3 + ["rate_limited"] * 2, kind
        # Messages have their own budget: untouched.
        said = await raw.request({"type": "say", "room": "lobby", "text": "hi", "id": "s"})
        assert said["type"] == "ok", kind


async def reader(connect: Clients, nick: str, source: str = "127.0.0.1", **hello: Any) -> Any:
    """A session of ``nick`` from ``source``, in the lobby."""
    conn = await connect(nick, source=source, **hello)
    await conn.request("join", room="lobby")
    return conn


async def read_codes(conn: Any, count: int) -> list[str]:
    """The outcome of ``count`` history requests, one after the other."""
    got = []
    for _ in range(count):
        try:
            await asyncio.wait_for(conn.request("history", room="lobby"), TIMEOUT)
            got.append("ok")
        except ServerError as exc:
            got.append(exc.code)
    return got


async def test_guests_of_one_address_share_its_read_budget(
    servers: Servers, connect: Clients
) -> None:
    """More sessions (up to --max-connections-per-ip) used to multiply the per-session
    budget; a guest nick more is free. Every guest of one address spends the address's
    budget; another address has its own, and so has an account from the same address."""
    server = await servers.start(**SHARED)
    await add_user(server.store, "friend", PASSWORD)
    first = await reader(connect, "first")
    assert await read_codes(first, 3) == ["ok"] * 3
    second = await reader(connect, "second")
    assert await read_codes(second, 4) == ["ok"] * 2 + ["rate_limited"] * 2
    assert await read_codes(first, 1) == ["rate_limited"]
    # Not fatal, and messages have their own budget.
    await second.request("say", room="lobby", text="still here")
    elsewhere = await reader(connect, "elsewhere", source="127.0.0.2")
    assert await read_codes(elsewhere, 5) == ["ok"] * 5
    friend = await reader(connect, "friend", password=PASSWORD)
    assert await read_codes(friend, 5) == ["ok"] * 5


async def test_an_accounts_sessions_share_its_read_budget(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**SHARED)
    await add_user(server.store, "friend", PASSWORD)
    here = await reader(connect, "friend", password=PASSWORD)
    assert await read_codes(here, 3) == ["ok"] * 3
    there = await reader(connect, "friend", source="127.0.0.2", password=PASSWORD)
    assert await read_codes(there, 3) == ["ok"] * 2 + ["rate_limited"]
    # Its address's guests are not charged for it.
    guest = await reader(connect, "guest", source="127.0.0.2")
    assert await read_codes(guest, 5) == ["ok"] * 5


async def test_guests_behind_one_address_reconnecting_at_once_are_answered(
    servers: Servers, connect: Clients
) -> None:
    """With the default bounds: 15 guests behind one NAT, each sending the reads of a
    reconnect in 50 rooms with 10 DM conversations twice over (120) at once, are all answered:
    the address's budget is not one session's."""
    defaults = ServerConfig()
    server = await servers.start(
        addr_read_rate=defaults.addr_read_rate, addr_read_burst=defaults.addr_read_burst
    )
    raws = []
    for n in range(15):
        raw = await connect.raw(port=server.port)
        await raw.hello(f"guest{n}")
        raws.append(raw)
    sent = {"type": "history", "announcements": True}
    for raw in raws:
        for i in range(120):
            raw.send({**sent, "id": i})
    for raw in raws:
        got: list[str] = []
        while len(got) < 120:
            frame = await raw.recv()
            if "id" in frame:
                got.append(str(frame.get("code", "ok")))
        assert set(got) == {"ok"}


async def test_marks_are_bounded_and_a_refused_one_moves_nothing(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**OPEN)
    raw = await connect.raw(port=server.port)
    await raw.hello("marker")
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    for i in range(5):
        await raw.request({"type": "say", "room": "lobby", "text": f"m{i}", "id": f"s{i}"})
    got = []
    for seq in range(1, 6):
        reply = await raw.request({"type": "mark", "room": "lobby", "seq": seq, "id": f"m{seq}"})
        got.append(str(reply.get("code", "ok")))
    assert got == ["ok"] * 3 + ["rate_limited"] * 2
    other = await connect.raw(port=server.port)
    await other.hello("marker")  # the same guest identity: its markers
    listed = await other.request({"type": "markers", "id": "l"})
    assert [(m.get("room"), m["seq"]) for m in listed["markers"]] == [("lobby", 3)]


async def post(server: Any, room: str, text: str) -> None:
    event = MsgEvent(room=room, from_="op", text=text)
    await server.store.append(Draft(StreamId.room(room), "op", None, event, as_member=False))


async def test_a_reconnecting_client_with_many_rooms_is_not_refused(
    servers: Servers, connect: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default bounds: a client in 50 rooms with 10 DM conversations reconnects,
    and every rejoin, history, marker and user request is answered."""
    defaults = ServerConfig()
    server = await servers.start(
        addr_read_rate=defaults.addr_read_rate, addr_read_burst=defaults.addr_read_burst
    )
    rooms = [f"room{i:02d}" for i in range(50)]
    peers = [f"peer{i}" for i in range(10)]
    for room in rooms:  # they exist (a guest creates 20 at once), each with a message
        await server.store.create_room(room)
        await post(server, room, f"welcome to {room}")
    gate = asyncio.Event()
    gate.set()

    async def connector() -> ConnectionLike:
        await gate.wait()  # held while the test posts what the client will have missed
        return await session._connect_next()

    session = ChatSession(
        "reader", port=server.port, rooms=rooms, ping_interval=3600, connector=connector
    )
    failures: list[SessionEvent] = []
    changed = asyncio.Event()

    def on(event: SessionEvent) -> None:
        if isinstance(event, SendFailed):
            failures.append(event)
        changed.set()

    session.add_listener(on)

    async def until(cond: Any) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not cond():
                changed.clear()
                await changed.wait()

    def synced() -> bool:
        return session.state is State.CONNECTED and all(
            (conv := session.conversations.get(ConvKey.room(r))) is not None and not conv.syncing
            for r in rooms
        )

    caplog.set_level(logging.INFO, logger="imchat.client")
    task = asyncio.create_task(session.run())
    try:
        await until(synced)
        for nick in peers:
            peer = await connect(nick)
            await peer.request("dm", to="reader", text=f"hi from {nick}")
        await until(lambda: all(ConvKey.dm(n) in session.conversations for n in peers))
        for nick in peers:
            assert session.conversations[ConvKey.dm(nick)].last_seq is not None, nick
        caplog.clear()
        before = session._conn
        assert before is not None
        gate.clear()
        before.abort()
        # While it is away every conversation gets a message: each needs a history.
        for room in rooms:
            await post(server, room, "while you were away")
        for nick in peers:
            await (await connect(nick)).request("dm", to="reader", text="and again")
        gate.set()
        await until(lambda: session._conn is not before and synced())
        # The TUI's own requests at connect: the markers, and /users.
        await session.request(Markers())
        await session.request(Users())
        # No history of the reconnect was refused (the library logs and skips one), and every
        # room is back: joins beyond the message burst were paced, not dropped.
        assert [r.getMessage() for r in caplog.records if "failed" in r.getMessage()] == []
        assert failures == []
        assert sorted(session.rooms) == rooms
    finally:
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, TIMEOUT)
