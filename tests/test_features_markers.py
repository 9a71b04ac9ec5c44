"""Revision 3: read markers (per user, forward only, synced to the user's sessions) and
typing notifications (forwarded at most once per 3 s, never stored, not to the sender)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, join, next_event, pending_events

from imchat.client import Connection, ServerError

pytestmark = pytest.mark.server_config(rate=0)
QUIET = frozenset({"online", "offline", "joined", "msg", "dm", "announce"})


async def _error(conn: Connection, kind: str, **fields: Any) -> str:
    with pytest.raises(ServerError) as info:
        await conn.request(kind, **fields)
    return info.value.code


async def test_markers_move_forward_and_reach_every_session(server: Any, connect: Clients) -> None:
    phone = await connect.admin()
    laptop = await connect.admin()
    await join(phone, "lobby")
    for text in ("a", "b", "c"):
        await phone.request("say", room="lobby", text=text)
    await pending_events(laptop, skip=QUIET)
    assert (await phone.request("mark", room="lobby", seq=2))["type"] == "ok"
    for conn in (phone, laptop):
        marker = await next_event(conn, "marker", skip=QUIET)
        assert marker == {"type": "marker", "room": "lobby", "seq": 2}
    # at or below the current marker: ok, nothing changes, nothing is sent
    await laptop.request("mark", room="lobby", seq=2)
    await laptop.request("mark", room="lobby", seq=1)
    await laptop.request("mark", room="lobby", seq=0)
    assert await pending_events(phone, skip=QUIET) == []
    assert await _error(phone, "mark", room="lobby", seq=4) == "bad_request"
    assert await _error(phone, "mark", room="lobby", seq=-1) == "bad_request"
    assert (await phone.request("markers"))["markers"] == [{"room": "lobby", "seq": 2}]
    # a join reply carries the marker as `read`
    third = await connect.admin()
    assert (await third.request("join", room="lobby"))["read"] == 2


async def test_markers_for_dms_and_announcements(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    bob = await connect("Bob")
    await admin.request("dm", to="bob", text="hi")
    await admin.request("announce", text="news")
    await bob.request("mark", **{"with": "admin"}, seq=1)
    assert await next_event(bob, "marker", skip=QUIET) == {
        "type": "marker",
        "with": "admin",
        "seq": 1,
    }
    await admin.request("mark", **{"with": "bob"}, seq=1)
    marker = await next_event(admin, "marker", skip=QUIET)
    assert marker == {"type": "marker", "with": "Bob", "seq": 1}  # as the receiver sees it
    await bob.request("mark", announcements=True, seq=1)
    markers = (await bob.request("markers"))["markers"]
    assert sorted(markers, key=str) == sorted(
        [{"with": "admin", "seq": 1}, {"announcements": True, "seq": 1}], key=str
    )
    # markers are the user's own: the admin's marker is not bob's
    assert (await admin.request("markers"))["markers"] == [{"with": "Bob", "seq": 1}]


async def test_mark_needs_membership_and_one_stream(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(bob, "lobby")
    await bob.request("say", room="lobby", text="x")
    assert await _error(alice, "mark", room="lobby", seq=1) == "not_in_room"
    assert await _error(alice, "mark", seq=1) == "bad_request"
    assert await _error(alice, "mark", room="lobby", announcements=True, seq=1) == "bad_request"
    assert await _error(alice, "mark", **{"with": "nobody"}, seq=1) == "no_such_user"
    assert (await join(alice, "lobby"))["read"] == 0


async def test_markers_survive_a_restart(servers: Any, connect: Clients) -> None:
    server = await servers.start(rate=0)
    alice = await connect("alice")
    await join(alice, "lobby")
    await alice.request("say", room="lobby", text="x")
    await alice.request("mark", room="lobby", seq=1)
    await servers.stop(server)
    await servers.start(rate=0)
    alice = await connect("alice")
    assert (await join(alice, "lobby"))["read"] == 1


async def test_typing_is_forwarded_once_per_interval_not_to_the_sender(
    server: Any, connect: Clients
) -> None:
    phone = await connect.admin()
    laptop = await connect.admin()
    bob = await connect("bob")
    carol = await connect("carol")  # not in the room: hears nothing
    await join(phone, "lobby")
    await join(bob, "lobby")
    assert (await phone.request("typing", room="lobby"))["type"] == "ok"
    assert await next_event(bob, "typing", skip=QUIET) == {
        "type": "typing",
        "room": "lobby",
        "from": "admin",
    }
    # throttled: answered ok, not forwarded again within 3 s
    await phone.request("typing", room="lobby")
    await laptop.request("typing", room="lobby")
    await bob.request("say", room="lobby", text="after")  # a marker that orders what bob gets
    event = await next_event(bob, skip=frozenset({"online", "offline", "joined"}))
    assert event["type"] == "msg", event
    assert [e for e in await pending_events(phone, skip=QUIET)] == []
    assert [e for e in await pending_events(laptop, skip=QUIET)] == []
    assert await pending_events(carol) == []
    # typing is never stored
    history = await bob.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["after"]


async def test_typing_in_a_dm_goes_to_the_peer(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.request("typing", **{"with": "bob"})
    assert await next_event(bob, "typing", skip=QUIET) == {
        "type": "typing",
        "with": "alice",
        "from": "alice",
    }
    assert await pending_events(alice, skip=QUIET) == []


async def test_typing_rules(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    assert await _error(alice, "typing", announcements=True) == "bad_request"
    assert await _error(alice, "typing", room="lobby") == "not_in_room"
    assert await _error(alice, "typing") == "bad_request"


async def test_typing_throttle_is_per_stream_and_expires(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imchat.server import message_features

    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await alice.request("typing", room="lobby")
    await alice.request("typing", **{"with": "bob"})  # another stream: not throttled
    kinds = [await next_event(bob, "typing", skip=QUIET) for _ in range(2)]
    assert [("room" in k, "with" in k) for k in kinds] == [(True, False), (False, True)]
    monkeypatch.setattr(message_features, "TYPING_INTERVAL", 0.0)  # as if 3 s had passed
    await alice.request("typing", room="lobby")
    assert (await next_event(bob, "typing", skip=QUIET))["room"] == "lobby"
