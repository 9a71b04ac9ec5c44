"""`cid` retries: same cid, same seq and ts; nothing stored or sent again; one namespace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Clients, join, next_event, pending_events

from imchat.client import ServerError


async def test_say_retry_is_answered_with_the_stored_message(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    first = await alice.request("say", room="lobby", text="once", cid="c-1")
    again = await alice.request("say", room="lobby", text="once", cid="c-1")
    assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
    # even with a different text the cid names the stored message
    third = await alice.request("say", room="lobby", text="changed", cid="c-1")
    assert (third["seq"], third["ts"]) == (first["seq"], first["ts"])
    # a marker proves nothing was sent in between
    marker = await alice.request("say", room="lobby", text="marker")
    assert marker["seq"] == first["seq"] + 1
    for conn in (alice, bob):
        msgs = [e for e in await pending_events(conn) if e["type"] == "msg"]
        while len(msgs) < 2:
            msgs.append(await next_event(conn, "msg"))
        assert [(m["seq"], m["text"]) for m in msgs] == [(1, "once"), (2, "marker")]
    history = await bob.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["once", "marker"]


async def test_cid_namespace_spans_rooms_dms_and_announcements(
    server: Any, connect: Clients
) -> None:
    admin = await connect.admin()
    bob = await connect("bob")
    await join(admin, "a")
    await join(admin, "b")
    first = await admin.request("say", room="a", text="in a", cid="shared")
    await next_event(admin, "msg")
    for request in (
        {"type": "say", "room": "b", "text": "in b"},
        {"type": "dm", "to": "bob", "text": "dm"},
        {"type": "announce", "text": "all"},
    ):
        kind = request.pop("type")
        again = await admin.request(kind, cid="shared", **request)
        assert (again["seq"], again["ts"]) == (first["seq"], first["ts"]), kind
        if kind == "announce":
            assert again["delivered"] == 0
    assert await pending_events(admin) == []
    # nothing reached bob: the first DM he gets is a later one, and it is the pair's first
    marker = await admin.request("dm", to="bob", text="marker")
    assert marker["seq"] == 1
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (1, "marker")
    assert (await admin.request("history", room="b"))["messages"] == []
    assert (await admin.request("history", **{"with": "bob"}))["messages"] == [event]
    assert (await admin.request("history", announcements=True))["messages"] == []


async def test_announce_and_dm_retries(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    bob = await connect("bob")
    ann = await admin.request("announce", text="once", cid="ann-1")
    assert ann["delivered"] == 2
    again = await admin.request("announce", text="once", cid="ann-1")
    assert (again["seq"], again["ts"], again["delivered"]) == (ann["seq"], ann["ts"], 0)
    dm = await admin.request("dm", to="bob", text="psst", cid="dm-1")
    again = await admin.request("dm", to="bob", text="psst", cid="dm-1")
    assert (again["seq"], again["ts"]) == (dm["seq"], dm["ts"])
    marker = await admin.request("dm", to="bob", text="marker")
    events = [await next_event(bob) for _ in range(3)]
    assert [(e["type"], e["seq"], e["text"]) for e in events] == [
        ("announce", 1, "once"),
        ("dm", 1, "psst"),
        ("dm", marker["seq"], "marker"),
    ]
    assert marker["seq"] == 2


async def test_cids_belong_to_their_user(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    a = await alice.request("say", room="lobby", text="alice's", cid="same")
    b = await bob.request("say", room="lobby", text="bob's", cid="same")
    assert (a["seq"], b["seq"]) == (1, 2)


async def test_retry_from_a_new_connection(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    first = await alice.request("say", room="lobby", text="lost ok?", cid="retry-1")
    await alice.close()
    alice = await connect("alice")
    await join(alice, "lobby")
    again = await alice.request("say", room="lobby", text="lost ok?", cid="retry-1")
    assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
    assert (await alice.request("join", room="lobby"))["last_seq"] == 1


async def test_a_refused_message_does_not_use_up_its_cid(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    with pytest.raises(ServerError):
        await alice.request("say", room="nowhere", text="x", cid="c")
    ok = await alice.request("say", room="lobby", text="x", cid="c")
    assert ok["seq"] == 1
    assert [e["text"] for e in await pending_events(alice)] == ["x"]


@pytest.mark.parametrize("cid", ["", "c" * 65, 5, None, ["c"], True])
async def test_bad_cid(server: Any, connect: Clients, cid: Any) -> None:
    admin = await connect.admin()
    await join(admin, "lobby")
    await connect("bob")
    for request in (
        {"type": "say", "room": "lobby", "text": "x"},
        {"type": "dm", "to": "bob", "text": "x"},
        {"type": "announce", "text": "x"},
    ):
        kind = request.pop("type")
        with pytest.raises(ServerError) as info:
            await admin.request(kind, cid=cid, **request)
        assert info.value.code == "bad_request", kind
    assert await pending_events(admin) == []


async def test_longest_cid(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    first = await alice.request("say", room="lobby", text="x", cid="c" * 64)
    again = await alice.request("say", room="lobby", text="x", cid="c" * 64)
    assert again["seq"] == first["seq"] == 1


async def test_same_cid_from_two_sessions_at_once_is_stored_once(
    server: Any, connect: Clients
) -> None:
    """A client that retries on a new connection while the first attempt is still in flight."""
    one = await connect.admin()
    two = await connect.admin()
    await join(one, "lobby")
    await next_event(two, "joined")
    results = await asyncio.gather(
        *(
            conn.request("say", room="lobby", text="only once", cid=f"race-{i}")
            for i in range(20)
            for conn in (one, two)
        )
    )
    for i in range(20):
        first, second = results[2 * i], results[2 * i + 1]
        assert (first["seq"], first["ts"]) == (second["seq"], second["ts"])
    history = await one.request("history", room="lobby", limit=100)
    assert [m["seq"] for m in history["messages"]] == list(range(1, 21))
