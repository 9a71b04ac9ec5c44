"""Revision 3: replies, edits, deletes and reactions, as the contract states them.

Each is a message of its own (next seq of its stream, stored, in history); targets must be
stored plain or action messages of the same stream, not deleted (``no_such_message``).
Runs on both backends (``IMCHAT_TEST_BACKEND=redis``).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, join, next_event, pending_events

from imchat.client import Connection, ServerError

pytestmark = pytest.mark.server_config(rate=0)


async def _error(conn: Connection, kind: str, **fields: Any) -> str:
    with pytest.raises(ServerError) as info:
        await conn.request(kind, **fields)
    return info.value.code


async def _room(connect: Clients, *nicks: str) -> list[Connection]:
    conns = []
    for nick in nicks:
        conn = await connect(nick)
        await join(conn, "lobby")
        conns.append(conn)
    for conn in conns:  # everyone's joined events, so later events are the ones under test
        await pending_events(conn, skip=frozenset({"online", "offline", "joined"}))
    return conns


async def test_reply_to_is_carried_and_checked(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    first = await alice.request("say", room="lobby", text="question?")
    await next_event(bob, "msg")
    await next_event(alice, "msg")
    ok = await bob.request("say", room="lobby", text="answer", reply_to=first["seq"])
    event = await next_event(alice, "msg")
    assert event == {
        "type": "msg",
        "room": "lobby",
        "from": "bob",
        "text": "answer",
        "reply_to": first["seq"],
        "seq": ok["seq"],
        "ts": ok["ts"],
    }
    assert await _error(bob, "say", room="lobby", text="x", reply_to=99) == "no_such_message"
    assert await _error(bob, "say", room="lobby", text="x", reply_to=0) == "no_such_message"
    assert await _error(bob, "say", room="lobby", text="x", reply_to=-1) == "bad_request"
    history = await alice.request("history", room="lobby")
    assert [m.get("reply_to") for m in history["messages"]] == [None, first["seq"]]


async def test_reply_to_in_another_stream_is_no_such_message(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    await join(alice, "other")
    await alice.request("say", room="other", text="one")
    await alice.request("say", room="other", text="two")
    await alice.request("say", room="lobby", text="only one here")
    assert await _error(alice, "say", room="lobby", text="x", reply_to=2) == "no_such_message"
    dm = await alice.request("dm", to="bob", text="psst")
    reply = await bob.request("dm", to="alice", text="yes?", reply_to=dm["seq"])
    assert reply["seq"] == 2
    events = [e for e in await pending_events(alice) if e["type"] == "dm"]
    while len(events) < 2:
        events.append(await next_event(alice, "dm"))
    assert events[1]["reply_to"] == dm["seq"] and events[1]["text"] == "yes?"


async def test_edit_is_a_message_of_its_own(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    said = await alice.request("say", room="lobby", text="helo")
    await next_event(bob, "msg")
    await next_event(alice, "msg")
    ok = await alice.request("edit", room="lobby", seq=said["seq"], text="hello")
    assert ok["seq"] == said["seq"] + 1
    event = await next_event(bob, "msg")
    assert event == {
        "type": "msg",
        "room": "lobby",
        "from": "alice",
        "kind": "edit",
        "target": said["seq"],
        "text": "hello",
        "seq": ok["seq"],
        "ts": ok["ts"],
    }
    # Edited again: the target stays the original message; edits are not targets.
    again = await alice.request("edit", room="lobby", seq=said["seq"], text="hello!")
    assert again["seq"] == ok["seq"] + 1
    assert await _error(alice, "edit", room="lobby", seq=ok["seq"], text="x") == "no_such_message"
    history = await bob.request("history", room="lobby")
    assert [(m.get("kind"), m["text"]) for m in history["messages"]] == [
        (None, "helo"),
        ("edit", "hello"),
        ("edit", "hello!"),
    ]


async def test_edit_rules(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    said = await alice.request("say", room="lobby", text="mine", kind="action")
    seq = said["seq"]
    assert await _error(bob, "edit", room="lobby", seq=seq, text="not yours") == "forbidden"
    assert await _error(alice, "edit", room="lobby", seq=seq + 5, text="x") == "no_such_message"
    assert await _error(alice, "edit", room="lobby", seq=seq, text="") == "bad_text"
    assert await _error(alice, "edit", room="lobby", seq=seq, text="a\x07") == "bad_text"
    assert await _error(alice, "edit", seq=seq, text="x") == "bad_request"
    assert await _error(alice, "edit", room="lobby", seq=seq) == "bad_request"  # no text
    both = {"room": "lobby", "with": "bob", "seq": seq, "text": "x"}
    assert await _error(alice, "edit", **both) == "bad_request"
    carol = await connect("carol")
    assert await _error(carol, "edit", room="lobby", seq=seq, text="x") == "not_in_room"
    # the action message may be edited by its author
    assert (await alice.request("edit", room="lobby", seq=seq, text="waves"))["seq"] == seq + 1


async def test_delete_rules(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    mine = await alice.request("say", room="lobby", text="oops")
    theirs = await bob.request("say", room="lobby", text="bob's")
    await pending_events(alice)
    assert await _error(alice, "delete", room="lobby", seq=theirs["seq"]) == "forbidden"
    ok = await alice.request("delete", room="lobby", seq=mine["seq"])
    event = await next_event(bob, "msg")
    while event.get("kind") != "delete":
        event = await next_event(bob, "msg")
    assert event == {
        "type": "msg",
        "room": "lobby",
        "from": "alice",
        "kind": "delete",
        "target": mine["seq"],
        "text": "",
        "seq": ok["seq"],
        "ts": ok["ts"],
    }
    # A deleted message is no target any more: not for edits, reactions, replies, deletes.
    seq = mine["seq"]
    assert await _error(alice, "delete", room="lobby", seq=seq) == "no_such_message"
    assert await _error(alice, "edit", room="lobby", seq=seq, text="x") == "no_such_message"
    react = {"room": "lobby", "seq": seq, "emoji": "👍"}
    assert await _error(bob, "react", **react) == "no_such_message"
    assert await _error(bob, "say", room="lobby", text="x", reply_to=seq) == "no_such_message"
    assert await _error(alice, "delete", room="lobby", seq=ok["seq"]) == "no_such_message"


async def test_admin_deletes_anyones_message(server: Any, connect: Clients) -> None:
    (alice,) = await _room(connect, "alice")
    admin = await connect.admin()
    await join(admin, "lobby")
    said = await alice.request("say", room="lobby", text="spam")
    ok = await admin.request("delete", room="lobby", seq=said["seq"])
    events = [
        await next_event(alice, "msg", skip=frozenset({"joined", "online"})) for _ in range(2)
    ]
    assert events[1]["kind"] == "delete" and events[1]["from"] == "admin"
    assert events[1]["seq"] == ok["seq"]
    # an admin still may not edit someone else's message
    other = await alice.request("say", room="lobby", text="x")
    assert await _error(admin, "edit", room="lobby", seq=other["seq"], text="y") == "forbidden"


async def test_reactions_one_per_user_emoji_and_message(server: Any, connect: Clients) -> None:
    alice, bob = await _room(connect, "alice", "bob")
    said = await alice.request("say", room="lobby", text="ship it?")
    await next_event(bob, "msg")
    await next_event(alice, "msg")
    seq = said["seq"]
    ok = await bob.request("react", room="lobby", seq=seq, emoji="👍")
    assert ok["seq"] == seq + 1
    event = await next_event(alice, "msg")
    assert (event["kind"], event["target"], event["text"], event["from"]) == (
        "react",
        seq,
        "👍",
        "bob",
    )
    # Adding it again: ok with the original reaction's seq, nothing stored or sent.
    again = await bob.request("react", room="lobby", seq=seq, emoji="👍")
    assert again["seq"] == ok["seq"]
    # Another emoji, and another user with the same emoji, are reactions of their own.
    party = await bob.request("react", room="lobby", seq=seq, emoji="🎉")
    mine = await alice.request("react", room="lobby", seq=seq, emoji="👍")
    assert (party["seq"], mine["seq"]) == (ok["seq"] + 1, ok["seq"] + 2)
    removed = await bob.request("react", room="lobby", seq=seq, emoji="👍", remove=True)
    assert removed["seq"] == ok["seq"] + 3
    absent = await bob.request("react", room="lobby", seq=seq, emoji="👍", remove=True)
    assert absent["seq"] == 0
    readded = await bob.request("react", room="lobby", seq=seq, emoji="👍")
    assert readded["seq"] == ok["seq"] + 4
    events = [await next_event(alice, "msg") for _ in range(4)]
    assert [(e["kind"], e["text"], e["seq"]) for e in events] == [
        ("react", "🎉", party["seq"]),
        ("react", "👍", mine["seq"]),
        ("unreact", "👍", removed["seq"]),
        ("react", "👍", readded["seq"]),
    ]
    assert await pending_events(alice) == []
    # reactions are no targets
    assert await _error(bob, "react", room="lobby", seq=ok["seq"], emoji="x") == "no_such_message"


async def test_emoji_follows_the_text_rules(server: Any, connect: Clients) -> None:
    (alice,) = await _room(connect, "alice")
    seq = (await alice.request("say", room="lobby", text="hi"))["seq"]
    for emoji in ("", "x" * 17, "\x1b[31m"):
        assert await _error(alice, "react", room="lobby", seq=seq, emoji=emoji) == "bad_text"
    assert (await alice.request("react", room="lobby", seq=seq, emoji="y" * 16))["seq"] > seq
    assert await _error(alice, "react", room="lobby", seq=seq, emoji=5) == "bad_request"


async def test_announcements_take_reactions_only(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    alice = await connect("alice")
    said = await admin.request("announce", text="maintenance at six")
    await next_event(alice, "announce")
    seq = said["seq"]
    ok = await alice.request("react", announcements=True, seq=seq, emoji="👀")
    event = await next_event(admin, "announce")
    while event["seq"] != ok["seq"]:
        event = await next_event(admin, "announce")
    assert (event["kind"], event["target"], event["text"], event["from"]) == (
        "react",
        seq,
        "👀",
        "alice",
    )
    assert await _error(admin, "edit", announcements=True, seq=seq, text="x") == "forbidden"
    assert await _error(admin, "delete", announcements=True, seq=seq) == "forbidden"
    absent = {"announcements": True, "seq": 99, "emoji": "x"}
    assert await _error(alice, "react", **absent) == "no_such_message"


async def test_dm_edits_reach_both_users(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    said = await alice.request("dm", to="bob", text="meet at 5")
    await next_event(bob, "dm")
    await next_event(alice, "dm")
    ok = await alice.request("edit", **{"with": "bob"}, seq=said["seq"], text="at 6")
    for conn in (alice, bob):
        event = await next_event(conn, "dm")
        assert event == {
            "type": "dm",
            "from": "alice",
            "to": "bob",
            "kind": "edit",
            "target": said["seq"],
            "text": "at 6",
            "seq": ok["seq"],
            "ts": ok["ts"],
        }
    react = await bob.request("react", **{"with": "alice"}, seq=said["seq"], emoji="ok")
    assert react["seq"] == ok["seq"] + 1
    assert (await next_event(alice, "dm"))["kind"] == "react"
    edit = {"with": "alice", "seq": said["seq"], "text": "x"}
    assert await _error(bob, "edit", **edit) == "forbidden"
    nobody = {"with": "nobody", "seq": 1, "text": "x"}
    assert await _error(alice, "edit", **nobody) == "no_such_user"


async def test_dm_edit_to_an_offline_user_waits_for_them(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    said = await alice.request("dm", to="bob", text="draft")
    await next_event(bob, "dm")
    await bob.close()
    await alice.request("edit", **{"with": "bob"}, seq=said["seq"], text="final")
    bob = await connect("bob")
    event = await next_event(bob, "dm")
    assert (event["kind"], event["text"]) == ("edit", "final")


async def test_cid_retry_of_a_delete_answers_the_first(server: Any, connect: Clients) -> None:
    alice, _bob = await _room(connect, "alice", "bob")
    said = await alice.request("say", room="lobby", text="x")
    first = await alice.request("delete", room="lobby", seq=said["seq"], cid="del-1")
    again = await alice.request("delete", room="lobby", seq=said["seq"], cid="del-1")
    assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
    events = await pending_events(alice)
    assert [e.get("kind") for e in events] == [None, "delete"]


# Burst 3: the join spends one (rev 2), the say one, the first edit the last.
@pytest.mark.server_config(rate=1.0, burst=3)
async def test_edits_count_against_the_rate_limit(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    said = await alice.request("say", room="lobby", text="x")
    await alice.request("edit", room="lobby", seq=said["seq"], text="y")
    assert await _error(alice, "edit", room="lobby", seq=said["seq"], text="z") == "rate_limited"
    # typing is not counted against it
    assert (await alice.request("typing", room="lobby"))["type"] == "ok"
