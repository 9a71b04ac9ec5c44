"""Rooms: join, part, say, topic, rooms; membership, seq, quit, ordering of replies and events."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, assert_ts, join, next_event, pending_events

from imchat.client import ServerError
from imchat.protocol import encode_message


async def test_join_reply_and_joined_event(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    ok = await alice.request("join", room="lobby")
    assert ok == {
        "type": "ok",
        "id": ok["id"],
        "room": "lobby",
        "topic": "",
        "members": ["alice"],
        "last_seq": 0,
        "read": 0,  # revision 3: the user's read marker
    }
    event = await next_event(alice, "joined")
    assert set(event) == {"type", "room", "nick", "ts"}
    assert (event["room"], event["nick"]) == ("lobby", "alice")
    assert_ts(event["ts"])

    bob = await connect("Bob")
    ok = await bob.request("join", room="#LOBBY")
    assert ok["room"] == "lobby"
    assert sorted(ok["members"]) == ["Bob", "alice"]
    for conn in (alice, bob):
        event = await next_event(conn, "joined")
        assert (event["room"], event["nick"]) == ("lobby", "Bob")


async def test_join_reports_topic_and_last_seq(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "dev")
    await alice.request("topic", room="dev", text="release friday")
    for i in range(3):
        await alice.request("say", room="dev", text=f"m{i}")
    bob = await connect("bob")
    ok = await bob.request("join", room="dev")
    assert ok["topic"] == "release friday"
    assert ok["last_seq"] == 3
    assert sorted(ok["members"]) == ["alice", "bob"]


@pytest.mark.parametrize(
    "room", ["", "#", "##lobby", "-x", ".x", "a b", "Ünïcode", "x" * 65, "a/b"]
)
async def test_bad_room(server: Any, connect: Clients, room: str) -> None:
    alice = await connect("alice")
    for request in (
        {"type": "join", "room": room},
        {"type": "part", "room": room},
        {"type": "say", "room": room, "text": "hi"},
        {"type": "topic", "room": room, "text": "hi"},
        {"type": "history", "room": room},
    ):
        with pytest.raises(ServerError) as info:
            await alice.request(request.pop("type"), **request)
        assert info.value.code == "bad_room"


async def test_room_name_limits(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    for room, normal in (("x" * 64, "x" * 64), ("#9.a-b_c", "9.a-b_c"), ("#A", "a")):
        ok = await alice.request("join", room=room)
        assert ok["room"] == normal


async def test_say_reply_and_msg_event(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await next_event(alice, "joined")  # bob's
    ok = await alice.request("say", room="#Lobby", text="hello\tworld\nline 2")
    assert set(ok) == {"type", "id", "seq", "ts"}
    assert ok["seq"] == 1
    assert_ts(ok["ts"])
    expected = {
        "type": "msg",
        "room": "lobby",
        "seq": 1,
        "ts": ok["ts"],
        "from": "alice",
        "text": "hello\tworld\nline 2",
    }
    assert await next_event(alice, "msg") == expected  # the sender's own session too
    assert await next_event(bob, "msg") == expected


async def test_action_kind(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    ok = await alice.request("say", room="lobby", text="waves", kind="action")
    msg = await next_event(alice, "msg")
    assert msg == {
        "type": "msg",
        "room": "lobby",
        "seq": ok["seq"],
        "ts": ok["ts"],
        "from": "alice",
        "text": "waves",
        "kind": "action",
    }
    ok = await alice.request("say", room="lobby", text="plain")
    assert "kind" not in await next_event(alice, "msg")


async def test_seq_is_per_room_and_gapless(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "a")
    await join(alice, "b")
    seqs = []
    for room in ("a", "b", "a", "a", "b", "a"):
        seqs.append((room, (await alice.request("say", room=room, text="x"))["seq"]))
    assert seqs == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)]
    events = await pending_events(alice)
    assert [(e["room"], e["seq"]) for e in events] == seqs


async def test_text_is_never_altered(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    texts = [
        "  padded  ",
        "e\u0301",
        "\u00a0",
        "😀" * 10,
        "<b>&amp;</b>",
        '"quoted" \\ back',
        "\u200b",
        "\U0010ffff",
        "\u2028 \u2029 \ufeff",
    ]
    for text in texts:
        await alice.request("say", room="lobby", text=text)
    events = await pending_events(alice)
    assert [e["text"] for e in events] == texts
    history = await alice.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == texts


@pytest.mark.parametrize(
    "text",
    ["", "a\x00b", "\x1b[31mred", "bell\x07", "cr\r\n", "\x7f", "\x85", "\x9f", "x" * 4001],
)
async def test_bad_text(server: Any, connect: Clients, text: str) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    with pytest.raises(ServerError) as info:
        await alice.request("say", room="lobby", text=text)
    assert info.value.code == "bad_text"
    if text:
        with pytest.raises(ServerError) as info:
            await alice.request("topic", room="lobby", text=text)
        assert info.value.code == "bad_text"
    assert await pending_events(alice) == []  # nothing was sent
    assert (await alice.request("join", room="lobby"))["last_seq"] == 0  # nor stored


@pytest.mark.server_config(max_text=10)
async def test_max_text_counts_code_points(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    ok = await alice.request("say", room="lobby", text="😀" * 10)  # 40 bytes of UTF-8
    assert ok["seq"] == 1
    with pytest.raises(ServerError) as info:
        await alice.request("say", room="lobby", text="x" * 11)
    assert info.value.code == "bad_text"


async def test_not_in_room(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    for conn, room in ((bob, "lobby"), (bob, "nowhere"), (alice, "nowhere")):
        for request in (
            {"type": "say", "room": room, "text": "hi"},
            {"type": "part", "room": room},
            {"type": "topic", "room": room, "text": "t"},
        ):
            with pytest.raises(ServerError) as info:
                await conn.request(request.pop("type"), **request)
            assert info.value.code == "not_in_room"
    # nothing reached the room, and the non-existent room was not created
    assert await pending_events(alice) == []
    rooms = await alice.request("rooms")
    assert [r["room"] for r in rooms["rooms"]] == ["lobby"]


async def test_part(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await next_event(alice, "joined")
    ok = await bob.request("part", room="#lobby")
    assert set(ok) == {"type", "id"} and ok["type"] == "ok"
    for conn in (alice, bob):
        event = await next_event(conn, "parted")
        assert (event["type"], event["room"], event["nick"]) == ("parted", "lobby", "bob")
        assert event.get("reason") != "quit"
        assert_ts(event["ts"])
    # bob no longer gets the room's events and may not speak in it
    with pytest.raises(ServerError) as info:
        await bob.request("say", room="lobby", text="hi")
    assert info.value.code == "not_in_room"
    await alice.request("say", room="lobby", text="after bob left")
    assert (await next_event(alice, "msg"))["text"] == "after bob left"
    assert await pending_events(bob) == []
    with pytest.raises(ServerError) as info:
        await bob.request("part", room="lobby")
    assert info.value.code == "not_in_room"


async def test_topic(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await next_event(alice, "joined")
    ok = await bob.request("topic", room="lobby", text="welcome all")
    assert set(ok) == {"type", "id"}
    for conn in (alice, bob):
        event = await next_event(conn, "topic")
        assert set(event) == {"type", "room", "topic", "by", "ts"}
        assert (event["room"], event["topic"], event["by"]) == ("lobby", "welcome all", "bob")
        assert_ts(event["ts"])
    rooms = await alice.request("rooms")
    assert rooms["rooms"] == [{"room": "lobby", "count": 2, "topic": "welcome all"}]
    # an empty topic clears it
    await alice.request("topic", room="lobby", text="")
    event = await next_event(bob, "topic")
    assert (event["topic"], event["by"]) == ("", "alice")
    assert (await bob.request("join", room="lobby"))["topic"] == ""


async def test_rooms_lists_counts_and_topics(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    assert (await alice.request("rooms"))["rooms"] == []
    await join(alice, "a")
    await join(alice, "b")
    await join(bob, "b")
    await alice.request("topic", room="a", text="topic a")
    rooms = await bob.request("rooms")
    assert sorted(rooms["rooms"], key=lambda r: r["room"]) == [
        {"room": "a", "count": 1, "topic": "topic a"},
        {"room": "b", "count": 2, "topic": ""},
    ]


async def test_users(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    ok = await alice.request("users")
    assert set(ok) == {"type", "id", "users"}
    assert ok["users"] == ["alice"]
    await connect("Bob")
    assert sorted((await alice.request("users"))["users"]) == ["Bob", "alice"]


async def test_presence_and_quit(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "a")
    await join(alice, "b")
    bob = await connect("bob")
    # rev 2: presence is scoped; bob hears his own arrival, alice (no shared room yet) not
    online = await next_event(bob, "online", skip=frozenset())
    assert set(online) == {"type", "nick", "ts"} and online["nick"] == "bob"
    assert_ts(online["ts"])
    await join(bob, "a")
    await join(bob, "b")
    await bob.request("join", room="c")
    await bob.close()
    events = []
    for _ in range(3):  # parted a, parted b, offline: in any order, nothing else
        events.append(await next_event(alice, skip=frozenset({"joined"})))
    parted = sorted((e for e in events if e["type"] == "parted"), key=lambda e: e["room"])
    assert [(e["room"], e["nick"], e["reason"]) for e in parted] == [
        ("a", "bob", "quit"),
        ("b", "bob", "quit"),
    ]
    offline = [e for e in events if e["type"] == "offline"]
    assert len(offline) == 1 and set(offline[0]) == {"type", "nick", "ts"}
    assert offline[0]["nick"] == "bob"
    assert (await alice.request("users"))["users"] == ["alice"]
    rooms = {r["room"]: r["count"] for r in (await alice.request("rooms"))["rooms"]}
    assert rooms["a"] == 1 and rooms["b"] == 1 and rooms.get("c", 0) == 0
    # membership ended with the session: back again, bob must join anew
    bob = await connect("bob")
    with pytest.raises(ServerError) as info:
        await bob.request("say", room="a", text="hi")
    assert info.value.code == "not_in_room"


async def test_abrupt_disconnect_is_a_quit(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    bob.abort()
    parted = await next_event(alice, "parted", skip=frozenset({"joined", "online", "offline"}))
    assert (parted["nick"], parted["reason"]) == ("bob", "quit")


async def test_reply_comes_before_the_events_it_causes(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    raw = await connect.raw()
    await raw.hello("alice")
    bob = await connect("bob")
    steps = [
        ({"type": "join", "room": "lobby", "id": 1}, "joined"),
        ({"type": "say", "room": "lobby", "text": "hi", "id": 2}, "msg"),
        ({"type": "topic", "room": "lobby", "text": "t", "id": 3}, "topic"),
        ({"type": "dm", "to": "bob", "text": "psst", "id": 4}, "dm"),
        ({"type": "part", "room": "lobby", "id": 5}, "parted"),
    ]
    for request, event_type in steps:
        raw.send(request)
        frame = await raw.recv_skip()
        assert (frame["type"], frame.get("id")) == ("ok", request["id"]), frame
        frame = await raw.recv_skip()
        assert frame["type"] == event_type and "id" not in frame, frame
    assert (await next_event(bob, "dm"))["text"] == "psst"
    await admin.request("announce", text="hello all")
    frame = await raw.recv_skip()
    assert frame["type"] == "announce" and frame["text"] == "hello all"


async def test_quitting_while_a_join_is_under_way_leaves_no_ghost_member(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user whose last session ends while its join of a new room is being stored must not
    linger in that room's member list."""
    entered, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    create_room = server.store.create_room

    async def gated_create_room(name: str) -> Any:
        entered.set()
        await release.wait()
        try:
            return await create_room(name)
        finally:
            finished.set()  # the rest of the join runs before anything else

    monkeypatch.setattr(server.store, "create_room", gated_create_room)
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="hi")  # DM peers: bob hears alice go (rev 2)
    await next_event(bob, "dm")
    alice.send_raw(encode_message({"type": "join", "room": "fresh", "id": 1}))
    try:
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        # Vanish with a reset: a plain close (FIN) would be a half-close, which the server
        # answers by finishing the join before it closes.
        sock = alice._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        alice.abort()
        offline = await next_event(bob, "offline", skip=frozenset({"online"}))
        assert offline["nick"] == "alice"
    finally:
        release.set()  # even on failure: a join left waiting would stall the server's stop
    await asyncio.wait_for(alice.wait_closed(), TIMEOUT)
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    monkeypatch.undo()
    rooms = {r["room"]: r["count"] for r in (await bob.request("rooms"))["rooms"]}
    assert rooms.get("fresh", 0) == 0
    ok = await bob.request("join", room="fresh")
    assert ok["members"] == ["bob"]
