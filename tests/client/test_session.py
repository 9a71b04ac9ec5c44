"""Unit tests of :class:`ChatSession` policy against an in-memory server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from imchat.client.session import (
    ANNOUNCEMENTS,
    Backoff,
    ChatSession,
    Conversation,
    ConvKey,
    Gap,
    MessagesAdded,
    OutboxChanged,
    SendFailed,
    SessionEvent,
    State,
    StateChanged,
)

from .fake_server import FakeServer

FAST = Backoff(base=0.01, factor=2, cap=0.05)
LOBBY = ConvKey.room("lobby")


class Recorder:
    """Collects a session's events and lets a test wait for a condition on them."""

    def __init__(self, session: ChatSession) -> None:
        self.events: list[SessionEvent] = []
        self._changed = asyncio.Event()
        session.add_listener(self._on)

    def _on(self, event: SessionEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        # Wakes on every session event, and every 20 ms for conditions on the server side.
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)

    def items(self, conv: ConvKey) -> list[dict[str, Any] | Gap]:
        out: list[dict[str, Any] | Gap] = []
        for e in self.events:
            if isinstance(e, MessagesAdded) and e.conv == conv:
                out = [*e.items, *out] if e.prepend else [*out, *e.items]
        return out

    def texts(self, conv: ConvKey) -> list[str]:
        return [
            i["text"] if isinstance(i, dict) else f"<gap {i.missing}>" for i in self.items(conv)
        ]

    def states(self) -> list[State]:
        return [e.state for e in self.events if isinstance(e, StateChanged)]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@contextlib.asynccontextmanager
async def start(
    server: FakeServer, nick: str, rooms: tuple[str, ...] = ("lobby",)
) -> AsyncIterator[tuple[ChatSession, Recorder]]:
    session = ChatSession(
        nick, connector=server.connect, backoff=FAST, rooms=rooms, ping_interval=3600
    )
    rec = Recorder(session)
    task = asyncio.create_task(session.run())
    await rec.wait(lambda: session.state is State.CONNECTED)
    try:
        yield session, rec
    finally:
        await session.close()
        await asyncio.wait_for(task, 5)


@pytest.fixture
async def alice(server: FakeServer) -> AsyncIterator[tuple[ChatSession, Recorder]]:
    async with start(server, "alice") as pair:
        yield pair


@pytest.fixture
async def bob(server: FakeServer) -> AsyncIterator[tuple[ChatSession, Recorder]]:
    async with start(server, "bob") as pair:
        yield pair


# -- Conversation (pure) -------------------------------------------------------------------


def msg(seq: int, text: str | None = None) -> dict[str, Any]:
    return {
        "type": "msg",
        "room": "lobby",
        "seq": seq,
        "ts": 1.0,
        "from": "x",
        "text": text or f"m{seq}",
    }


def test_conversation_drops_duplicates_and_marks_gaps() -> None:
    conv = Conversation(LOBBY, "#lobby")
    assert conv.deliver([msg(1), msg(2)]) == [msg(1), msg(2)]
    assert conv.live(msg(2)) == []
    out = conv.live(msg(5))
    assert out == [Gap(LOBBY, 2, 5), msg(5)]
    assert out[0].missing == 2  # type: ignore[union-attr]


def test_conversation_sync_orders_history_before_buffered_live() -> None:
    conv = Conversation(LOBBY, "#lobby")
    conv.deliver([msg(1)])
    conv.begin_sync()
    assert conv.live(msg(4)) == []
    assert conv.live(msg(5)) == []
    out = conv.finish_sync([msg(2), msg(3), msg(4)], known_last=4)
    assert out == [msg(2), msg(3), msg(4), msg(5)]


def test_conversation_gap_when_history_cannot_reach_known_last() -> None:
    conv = Conversation(LOBBY, "#lobby")
    conv.deliver([msg(1)])
    conv.begin_sync()
    # The server trimmed everything we missed: history is empty but the room is at 9.
    assert conv.finish_sync([], known_last=9) == [Gap(LOBBY, 1, 10)]
    assert conv.live(msg(10)) == [msg(10)]


def test_conversation_older_pages() -> None:
    conv = Conversation(LOBBY, "#lobby")
    conv.deliver([msg(5), msg(6)])
    assert conv.older([msg(3), msg(4), msg(5)], limit=3) == [msg(3), msg(4)]
    assert not conv.complete and conv.first_seq == 3
    assert conv.older([msg(1), msg(2)], limit=2) == [msg(1), msg(2)]
    assert conv.complete and conv.first_seq == 1


def test_backoff_is_jittered_and_capped() -> None:
    b = Backoff(base=1, factor=2, cap=8)
    assert b.delay(0, lambda: 0.0) == 0.5
    assert b.delay(0, lambda: 1.0) == 1.0
    assert b.delay(10, lambda: 1.0) == 8


# -- ChatSession against the fake server --------------------------------------------------


async def test_reconnect_resumes_each_room_exactly_once(
    server: FakeServer, alice: tuple[ChatSession, Recorder], bob: tuple[ChatSession, Recorder]
) -> None:
    a, arec = alice
    b, _ = bob
    b.say("lobby", "before")
    await arec.wait(lambda: "before" in arec.texts(LOBBY))
    # alice loses her connection; bob keeps talking while she is away.
    server.down = True
    for conn in server.sessions_of("alice"):
        conn.abort()
    await arec.wait(lambda: a.state is State.RECONNECTING)
    for i in range(3):
        server.server_say("bob", "lobby", f"missed {i}")
    server.down = False
    a.reconnect_now()
    await arec.wait(lambda: "missed 2" in arec.texts(LOBBY))
    b.say("lobby", "after")
    await arec.wait(lambda: "after" in arec.texts(LOBBY))
    assert arec.texts(LOBBY) == ["before", "missed 0", "missed 1", "missed 2", "after"]
    assert State.RECONNECTING in arec.states()
    # Resumed with history after the last seen seq, not a full reload.
    assert ("history", {"room": "lobby", "after": 1, "limit": 500}) in server.requests


async def test_gap_marker_when_history_was_trimmed(alice: tuple[ChatSession, Recorder]) -> None:
    a, arec = alice
    server: FakeServer = a._connector.__self__  # type: ignore[attr-defined]
    server.server_say("bob", "lobby", "seen")
    await arec.wait(lambda: "seen" in arec.texts(LOBBY))
    server.down = True
    server.drop_all()
    await arec.wait(lambda: a.state is State.RECONNECTING)
    server.history_keep = 2
    for i in range(6):
        server.server_say("bob", "lobby", f"m{i}")
    server.down = False
    a.reconnect_now()
    await arec.wait(lambda: "m5" in arec.texts(LOBBY))
    assert arec.texts(LOBBY) == ["seen", "<gap 4>", "m4", "m5"]


async def test_more_missed_than_one_reply_holds_shows_newest_and_a_gap(
    alice: tuple[ChatSession, Recorder],
) -> None:
    a, arec = alice
    server: FakeServer = a._connector.__self__  # type: ignore[attr-defined]
    server.server_say("bob", "lobby", "seen")
    await arec.wait(lambda: "seen" in arec.texts(LOBBY))
    server.down = True
    server.drop_all()
    await arec.wait(lambda: a.state is State.RECONNECTING)
    for i in range(600):
        server.server_say("bob", "lobby", f"m{i}")
    server.down = False
    a.reconnect_now()
    await arec.wait(lambda: "m599" in arec.texts(LOBBY))
    texts = arec.texts(LOBBY)
    assert texts[:3] == ["seen", "<gap 100>", "m100"]
    assert len(texts) == 2 + 500


async def test_lost_ok_resend_with_cid_is_stored_once(
    server: FakeServer, alice: tuple[ChatSession, Recorder], bob: tuple[ChatSession, Recorder]
) -> None:
    a, arec = alice
    _, brec = bob
    server.lose_ok_for = "alice"
    pending = a.say("lobby", "only once")
    await arec.wait(lambda: a.state is State.RECONNECTING or not a.outbox)
    await arec.wait(lambda: a.state is State.CONNECTED and not a.outbox)
    await brec.wait(lambda: "only once" in brec.texts(LOBBY))
    stored = [m for m in server.rooms["lobby"].messages if m["text"] == "only once"]
    assert len(stored) == 1
    says = [f for k, f in server.requests if k == "say"]
    assert [f["cid"] for f in says] == [pending.cid, pending.cid]
    assert arec.texts(LOBBY).count("only once") == 1
    assert brec.texts(LOBBY).count("only once") == 1


async def test_messages_typed_offline_are_pending_then_sent_in_order(
    server: FakeServer, alice: tuple[ChatSession, Recorder], bob: tuple[ChatSession, Recorder]
) -> None:
    a, arec = alice
    _, brec = bob
    server.down = True
    server.drop_all()
    await arec.wait(lambda: a.state is State.RECONNECTING)
    a.say("lobby", "one")
    a.dm("bob", "two")
    a.say("lobby", "three", action=True)
    outbox = [e for e in arec.events if isinstance(e, OutboxChanged) and e.conv == LOBBY]
    assert [p.text for p in outbox[-1].pending] == ["one", "three"]
    server.down = False
    a.reconnect_now()
    await arec.wait(lambda: not a.outbox and "three" in arec.texts(LOBBY))
    assert arec.texts(LOBBY) == ["one", "three"]
    assert arec.items(LOBBY)[-1]["kind"] == "action"  # type: ignore[index]
    await brec.wait(lambda: "two" in brec.texts(ConvKey.dm("alice")))


async def test_server_error_drops_pending_and_reports_it(
    server: FakeServer, alice: tuple[ChatSession, Recorder]
) -> None:
    a, arec = alice
    a.say("nowhere", "hello?")
    await arec.wait(lambda: any(isinstance(e, SendFailed) for e in arec.events))
    failed = next(e for e in arec.events if isinstance(e, SendFailed))
    assert failed.code == "not_in_room" and failed.text == "hello?"
    assert not a.outbox


async def test_dm_and_announcement_resume_after_reconnect(
    server: FakeServer, alice: tuple[ChatSession, Recorder], bob: tuple[ChatSession, Recorder]
) -> None:
    a, arec = alice
    b, brec = bob
    a.dm("bob", "hi bob")
    dm_alice = ConvKey.dm("alice")
    await brec.wait(lambda: "hi bob" in brec.texts(dm_alice))
    async with start(server, "admin") as (admin, _):
        # bob drops; while he is away alice writes again and the admin announces.
        server.down = True
        for conn in server.sessions_of("bob"):
            conn.abort()
        await brec.wait(lambda: b.state is State.RECONNECTING)
        a.dm("bob", "while away")
        admin.announce("maintenance at noon")
        await arec.wait(lambda: "maintenance at noon" in arec.texts(ANNOUNCEMENTS))
        await arec.wait(lambda: "while away" in arec.texts(ConvKey.dm("bob")))
        server.down = False
        b.reconnect_now()
        await brec.wait(lambda: "maintenance at noon" in brec.texts(ANNOUNCEMENTS))
        await brec.wait(lambda: "while away" in brec.texts(dm_alice))
        # The undelivered DM is pushed after welcome and also found by history: shown once.
        # (A later message proves every earlier event has been handled.)
        a.dm("bob", "and now")
        await brec.wait(lambda: "and now" in brec.texts(dm_alice))
        assert brec.texts(dm_alice) == ["hi bob", "while away", "and now"]
        assert brec.texts(ANNOUNCEMENTS) == ["maintenance at noon"]


async def test_auth_failure_goes_offline_without_retrying(server: FakeServer) -> None:
    async with start(server, "carol"):
        session = ChatSession("carol", connector=server.connect, backoff=FAST)
        rec = Recorder(session)
        await asyncio.wait_for(session.run(), 5)  # returns: nick_taken on first connect
        assert rec.states()[-1] is State.OFFLINE
        assert "nick_taken" in (rec.events[-1].reason or "")  # type: ignore[union-attr]


async def test_load_older_prepends_until_complete(
    server: FakeServer, alice: tuple[ChatSession, Recorder]
) -> None:
    _, arec = alice
    for i in range(1, 131):
        server.server_say("bob", "lobby", f"m{i}")
    await arec.wait(lambda: "m130" in arec.texts(LOBBY))
    # Reload as a fresh client so only the latest 50 are shown at first.
    async with start(server, "carol") as (c, crec):
        await crec.wait(lambda: "m130" in crec.texts(LOBBY))
        assert crec.texts(LOBBY)[0] == "m81"
        assert await c.load_older(LOBBY) == 80
        assert crec.texts(LOBBY) == [f"m{i}" for i in range(1, 131)]
        assert c.conversations[LOBBY].complete
        assert await c.load_older(LOBBY) == 0


async def test_pings_keep_the_session_alive_and_a_silent_peer_is_dropped(
    server: FakeServer,
) -> None:
    session = ChatSession(
        "alice",
        connector=server.connect,
        backoff=FAST,
        rooms=["lobby"],
        ping_interval=0.02,
        ping_timeout=0.1,
    )
    rec = Recorder(session)
    task = asyncio.create_task(session.run())
    try:
        await rec.wait(lambda: sum(k == "ping" for k, _ in server.requests) >= 3)
        assert session.state is State.CONNECTED
        # The peer stops answering: no pong within ping_timeout, so reconnect.
        server.ignore_pings = True
        await rec.wait(lambda: State.RECONNECTING in rec.states())
        server.ignore_pings = False
        await rec.wait(lambda: session.state is State.CONNECTED)
        assert len(server.connections) >= 2
    finally:
        await session.close()
        await asyncio.wait_for(task, 5)


async def test_a_room_joined_by_another_session_of_ours_is_taken_up(
    server: FakeServer, bob: tuple[ChatSession, Recorder]
) -> None:
    b, _ = bob
    async with start(server, "admin") as (one, rec_one), start(server, "admin") as (two, _):
        await two.join("ops")
        dev = ConvKey.room("ops")
        await rec_one.wait(
            lambda: "ops" in one.rooms,
        )
        b.say("lobby", "unrelated")
        await rec_one.wait(lambda: "unrelated" in rec_one.texts(LOBBY))
        joins = [f for k, f in server.requests if k == "join" and f["room"] == "ops"]
        assert len(joins) == 2  # one each: the second session adopted it once
        two.say("ops", "from the other session")
        await rec_one.wait(lambda: "from the other session" in rec_one.texts(dev))
        assert rec_one.texts(dev) == ["from the other session"]
