"""The client library and protocol revision 2: resume secrets on disk, epochs and rewinds."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import TIMEOUT, Clients, Servers, join

from imchat.client.resume import RESUME_FILE, ResumeStore, state_dir
from imchat.client.session import (
    ChatSession,
    ConvKey,
    HistoryReset,
    SessionEvent,
    State,
    Welcomed,
)

from .fake_server import FakeServer
from .test_session import FAST, LOBBY, start

ROOM = ConvKey.room("lobby")


def test_resume_file_is_private_and_per_server_and_nick(
    tmp_path: Path, private_state_dir: Path
) -> None:
    assert state_dir() == private_state_dir  # $IMCHAT_STATE_DIR, else the platform's
    store = ResumeStore(tmp_path / "state")
    store.put("chat.example", 7667, "Bob", "secret-1")
    store.put("chat.example", 7668, "bob", "secret-2")
    path = tmp_path / "state" / RESUME_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.get("chat.example", 7667, "BOB") == "secret-1"
    assert store.get("chat.example", 7668, "bob") == "secret-2"
    assert store.get("other.example", 7667, "bob") is None
    store.forget("chat.example", 7667, "bob")
    assert store.get("chat.example", 7667, "bob") is None
    assert store.get("chat.example", 7668, "bob") == "secret-2"


class Events:
    def __init__(self, session: ChatSession) -> None:
        self.items: list[SessionEvent] = []
        self.changed = asyncio.Event()
        session.add_listener(self._on)

    def _on(self, event: SessionEvent) -> None:
        self.items.append(event)
        self.changed.set()

    async def wait(self, predicate: Any, timeout: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    def texts(self, conv: ConvKey) -> list[str]:
        from imchat.client.session import MessagesAdded

        return [
            str(m["text"])
            for e in self.items
            if isinstance(e, MessagesAdded) and e.conv == conv
            for m in e.items
            if isinstance(m, dict)
        ]


@contextlib.asynccontextmanager
async def running(session: ChatSession) -> AsyncIterator[Events]:
    events = Events(session)
    task = asyncio.create_task(session.run())
    try:
        yield events
    finally:
        await session.close()
        await asyncio.wait_for(task, TIMEOUT)


async def test_a_restarted_client_gets_its_guest_nick_back(server: Any, connect: Clients) -> None:
    first = ChatSession("bob", port=server.port, backoff=FAST)
    async with running(first) as events:
        await events.wait(lambda: first.state is State.CONNECTED)
        resume = (first.welcome or {})["resume"]
    # The nick is held for bob's identity: a client elsewhere (no resume) is refused ...
    stranger = await connect()
    try:
        await stranger.hello("bob")
        raise AssertionError("a stranger took a held nick")
    except Exception as exc:
        assert "nick_taken" in str(exc)
    # ... and the same user's next client, reading the resume file, gets it back.
    again = ChatSession("bob", port=server.port, backoff=FAST)
    async with running(again) as events:
        await events.wait(lambda: again.state is State.CONNECTED)
        assert (again.welcome or {})["resume"] == resume


async def test_a_new_epoch_voids_seen_seqs_and_hides_nothing(
    servers: Servers, connect: Clients, tmp_path: Path
) -> None:
    """Issue 9: on a new store, new messages reused seqs the client had seen and it hid them."""
    old = await servers.start()
    port = old.port
    session = ChatSession("alice", port=port, backoff=FAST, rooms=("lobby",))
    async with running(session) as events:
        await events.wait(lambda: session.state is State.CONNECTED)
        bob = await connect("bob")
        await join(bob, "lobby")
        for i in range(3):
            await bob.request("say", room="lobby", text=f"old {i}")
        await events.wait(lambda: "old 2" in events.texts(ROOM))
        await bob.close()
        await servers.stop(old)
        await events.wait(lambda: session.state is State.RECONNECTING)
        prefix = {"redis_prefix": f"{servers.redis_prefix}new:"} if servers.redis_prefix else {}
        await servers.start(tmp_path / "new-store", port=port, **prefix)
        carol = await connect("carol")
        await join(carol, "lobby")
        ok = await carol.request("say", room="lobby", text="new store, seq 1")
        assert ok["seq"] == 1
        session.reconnect_now()
        await events.wait(lambda: "new store, seq 1" in events.texts(ROOM))
        resets = [e for e in events.items if isinstance(e, HistoryReset)]
        assert resets == [HistoryReset(None)]
        welcomes = [e for e in events.items if isinstance(e, Welcomed)]
        assert len({w.welcome["epoch"] for w in welcomes}) == 2


async def test_a_rewound_room_is_refetched_not_hidden() -> None:
    """A join whose last_seq is below what the client saw: the room's stream was rewound."""
    server = FakeServer()
    async with start(server, "alice") as (session, rec):
        for text in ("one", "two", "three"):
            server.server_say("bob", "lobby", text)
        await rec.wait(lambda: "three" in rec.texts(LOBBY))
        server.down = True
        server.drop_all()
        await rec.wait(lambda: session.state is State.RECONNECTING)
        room = server.rooms["lobby"]
        room.messages = room.messages[:1]  # a store restored from an older copy
        room.seq = 1
        server.server_say("bob", "lobby", "after the restore")  # seq 2 again
        server.down = False
        session.reconnect_now()
        await rec.wait(lambda: "after the restore" in rec.texts(LOBBY))
        # The recent history is shown again after the reset line: nothing is hidden.
        assert rec.texts(LOBBY) == ["one", "two", "three", "one", "after the restore"]
        assert [e for e in rec.events if isinstance(e, HistoryReset)] == [HistoryReset(LOBBY, 2)]


async def test_members_of_a_joined_room_count_as_online(server: Any, connect: Clients) -> None:
    """Scoped presence sends no "online" for a user who came after us while we shared no room;
    the join reply's members are online all the same."""
    alice = ChatSession("alice", port=server.port, backoff=FAST)
    async with running(alice) as events:
        await events.wait(lambda: alice.state is State.CONNECTED)
        bob = await connect("bob")
        await join(bob, "dev")
        assert "bob" not in alice.online  # no room or DM in common: no "online" for alice
        await alice.join("dev")
        assert alice.online.get("bob") == "bob"
