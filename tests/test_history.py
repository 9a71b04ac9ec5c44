"""History: after/before/limit, oldest first, entries exactly the events as they were sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, join, next_event, pending_events

from imchat.client import Connection, ServerError
from imchat.protocol import encode_message

pytestmark = pytest.mark.server_config(rate=0)


async def fill(conn: Connection, room: str, count: int, start: int = 1) -> list[dict[str, Any]]:
    """Say ``count`` messages (pipelined) and return the msg events they caused, in order."""
    replies = await asyncio.wait_for(
        asyncio.gather(
            *(conn.request("say", room=room, text=f"m{start + i}") for i in range(count))
        ),
        TIMEOUT * 4,
    )
    skip = frozenset({"online", "offline", "joined", "parted"})
    events = [await next_event(conn, "msg", skip=skip) for _ in range(count)]
    assert [e["seq"] for e in events] == [r["seq"] for r in replies]
    return events


@pytest.fixture
async def lobby(server: Any, connect: Clients) -> tuple[Connection, list[dict[str, Any]]]:
    """alice in lobby with 20 messages said; returns her connection and the msg events."""
    alice = await connect("alice")
    await join(alice, "lobby")
    events = await fill(alice, "lobby", 20)
    assert [e["seq"] for e in events] == list(range(1, 21))
    return alice, events


def seqs(reply: dict[str, Any]) -> list[int]:
    return [m["seq"] for m in reply["messages"]]


async def test_entries_are_exactly_the_events(lobby: Any) -> None:
    alice, events = lobby
    reply = await alice.request("history", room="lobby")
    assert set(reply) == {"type", "id", "messages"}
    assert reply["messages"] == events


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, list(range(1, 21))),
        ({"limit": 3}, [18, 19, 20]),
        ({"limit": 1}, [20]),
        ({"after": 5, "limit": 3}, [6, 7, 8]),
        ({"after": 0, "limit": 2}, [1, 2]),
        ({"after": 17}, [18, 19, 20]),
        ({"after": 20}, []),
        ({"after": 99}, []),
        ({"before": 5}, [1, 2, 3, 4]),
        ({"before": 8, "limit": 2}, [6, 7]),
        ({"before": 1}, []),
        ({"before": 99, "limit": 2}, [19, 20]),
        ({"after": 2, "before": 9, "limit": 3}, [3, 4, 5]),
        ({"after": 2, "before": 5}, [3, 4]),
        ({"after": 4, "before": 5}, []),
        ({"after": 10, "before": 3}, []),
    ],
)
async def test_after_before_limit(lobby: Any, query: dict[str, int], expected: list[int]) -> None:
    alice, events = lobby
    reply = await alice.request("history", room="#LOBBY", **query)
    assert seqs(reply) == expected
    assert reply["messages"] == [events[s - 1] for s in expected]


async def test_default_limit_is_50_and_limit_over_500_is_500(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "big")
    events = await fill(alice, "big", 510)
    assert seqs(await alice.request("history", room="big")) == list(range(461, 511))
    reply = await alice.request("history", room="big", limit=1000)
    assert seqs(reply) == list(range(11, 511))
    assert reply["messages"] == events[10:]
    reply = await alice.request("history", room="big", after=0, limit=10**6)
    assert seqs(reply) == list(range(1, 501))
    reply = await alice.request("history", room="big", after=0, before=511, limit=501)
    assert seqs(reply) == list(range(1, 501))


async def test_history_is_public_and_needs_an_existing_room(lobby: Any, connect: Clients) -> None:
    _, events = lobby
    bob = await connect("bob")  # not a member
    reply = await bob.request("history", room="lobby", limit=2)
    assert reply["messages"] == events[-2:]
    with pytest.raises(ServerError) as info:
        await bob.request("history", room="nowhere")
    assert info.value.code == "no_such_room"
    # asking does not create it
    assert [r["room"] for r in (await bob.request("rooms"))["rooms"]] == ["lobby"]


async def test_room_that_everyone_left_keeps_its_history(lobby: Any, connect: Clients) -> None:
    alice, events = lobby
    await alice.request("part", room="lobby")
    await alice.close()
    bob = await connect("bob")
    assert (await bob.request("history", room="lobby"))["messages"] == events
    ok = await bob.request("join", room="lobby")
    assert ok["last_seq"] == 20
    assert (await bob.request("say", room="lobby", text="next"))["seq"] == 21


async def test_history_keeps_kind_and_exact_text(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    await alice.request("say", room="lobby", text="dances", kind="action")
    await alice.request("say", room="lobby", text="tab\there\nnewline ☃")
    events = await pending_events(alice)
    assert (await alice.request("history", room="lobby"))["messages"] == events
    assert events[0]["kind"] == "action"


async def test_dm_history(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.request("dm", to="bob", text="one")
    await bob.request("dm", to="alice", text="two")
    await alice.request("dm", to="bob", text="three")
    events = [await next_event(alice, "dm") for _ in range(3)]
    for conn, other in ((alice, "bob"), (bob, "alice"), (bob, "ALICE")):
        reply = await conn.request("history", **{"with": other})
        assert reply["messages"] == events
    reply = await alice.request("history", **{"with": "bob", "after": 1, "limit": 1})
    assert reply["messages"] == events[1:2]
    reply = await alice.request("history", **{"with": "bob", "before": 3})
    assert reply["messages"] == events[:2]
    # a third user's view of the pair is not alice/bob's conversation
    carol = await connect("carol")
    reply = await carol.request("history", **{"with": "bob"})
    assert reply["messages"] == []


async def test_announcement_history_paging(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    for i in range(5):
        await admin.request("announce", text=f"a{i}")
    events = [await next_event(admin, "announce") for _ in range(5)]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    alice = await connect("alice")
    reply = await alice.request("history", announcements=True, after=1, before=5, limit=2)
    assert reply["messages"] == events[1:3]
    reply = await alice.request("history", announcements=True, limit=2)
    assert reply["messages"] == events[3:]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"room": "lobby", "with": "bob"},
        {"room": "lobby", "announcements": True},
        {"announcements": False},
        {"room": "lobby", "after": -1},
        {"room": "lobby", "before": "9"},
        {"room": "lobby", "limit": 0},
        {"room": "lobby", "limit": 2.5},
        {"room": 5},
    ],
)
async def test_bad_history_requests(lobby: Any, query: dict[str, Any]) -> None:
    alice, _ = lobby
    with pytest.raises(ServerError) as info:
        await alice.request("history", **query)
    assert info.value.code == "bad_request"


async def test_history_reply_may_exceed_max_frame(server: Any, connect: Clients) -> None:
    """max_frame limits what clients send; a server frame may be longer."""
    alice = await connect("alice")
    await join(alice, "big")
    events = []
    for _ in range(25):  # ~100 KB of history, above max_frame (64 KiB), below max_buffer
        await alice.request("say", room="big", text="z" * 4000)
        events.append(await next_event(alice, "msg"))
    reply = await alice.request("history", room="big")
    assert reply["messages"] == events
    assert len(encode_message(reply)) > 65536


@pytest.mark.timeout(60)
async def test_history_reply_larger_than_max_frame_and_max_buffer(
    server: Any, connect: Clients
) -> None:
    """A history reply may be far longer than max_frame (clients take up to 16 MiB); asking for
    one is no reason to be cut off as a slow consumer (default max_buffer is 1 MiB)."""
    alice = await connect("alice")
    await join(alice, "big")
    text = "y" * 4000
    for _ in range(300):  # 1.2 MB of history, one request at a time
        await alice.request("say", room="big", text=text)
        await next_event(alice, "msg")
    reply = await asyncio.wait_for(alice.request("history", room="big", limit=500), TIMEOUT)
    assert seqs(reply) == list(range(1, 301))
    assert all(m["text"] == text for m in reply["messages"])
    assert (await alice.request("ping"))["type"] == "pong"


async def test_reconnecting_client_misses_nothing(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await fill(alice, "lobby", 3)
    seen = [
        (await next_event(bob, "msg", skip=frozenset({"online", "joined"})))["seq"]
        for _ in range(3)
    ]
    await bob.close()
    missed = await fill(alice, "lobby", 4, start=4)
    bob = await connect("bob")
    await join(bob, "lobby")
    reply = await bob.request("history", room="lobby", after=seen[-1])
    assert reply["messages"] == missed
    ok = await alice.request("say", room="lobby", text="live again")
    event = await next_event(bob, "msg")
    assert event["seq"] == ok["seq"] == missed[-1]["seq"] + 1
