"""Direct messages: delivery to both users, per-pair seq, offline delivery exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import (
    REDIS_BACKEND_URL,
    TIMEOUT,
    Clients,
    admin_token,
    assert_ts,
    next_event,
    pending_events,
)

from imchat.client import ServerError
from imchat.protocol import encode_message


async def test_dm_reply_and_event_to_both(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    ok = await alice.request("dm", to="bob", text="hi bob")
    assert set(ok) == {"type", "id", "seq", "ts"} and ok["seq"] == 1
    assert_ts(ok["ts"])
    expected = {
        "type": "dm",
        "from": "alice",
        "to": "bob",
        "seq": 1,
        "ts": ok["ts"],
        "text": "hi bob",
    }
    assert await next_event(bob, "dm") == expected
    assert await next_event(alice, "dm") == expected


async def test_seq_counts_the_pair(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    seqs = [
        (await alice.request("dm", to="bob", text="1"))["seq"],
        (await bob.request("dm", to="alice", text="2"))["seq"],
        (await alice.request("dm", to="carol", text="3"))["seq"],
        (await carol.request("dm", to="bob", text="4"))["seq"],
        (await alice.request("dm", to="BOB", text="5"))["seq"],
    ]
    assert seqs == [1, 2, 1, 1, 3]
    # a DM reaches the other user some time after its ok: wait for each
    events = [await next_event(bob, "dm") for _ in range(4)]
    assert [(e["from"], e["to"], e["seq"], e["text"]) for e in events] == [
        ("alice", "bob", 1, "1"),
        ("bob", "alice", 2, "2"),
        ("carol", "bob", 1, "4"),
        ("alice", "bob", 3, "5"),
    ]


async def test_dm_uses_the_recipients_spelling(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("BoB")
    await alice.request("dm", to="bob", text="hi")
    event = await next_event(bob, "dm")
    assert (event["from"], event["to"]) == ("alice", "BoB")


async def test_dm_to_unknown_user(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    with pytest.raises(ServerError) as info:
        await alice.request("dm", to="nobody", text="hello?")
    assert info.value.code == "no_such_user"
    assert await pending_events(alice) == []


@pytest.mark.parametrize("to", ["-bob", "bob smith", "", "b" * 33])
async def test_dm_to_an_invalid_nick(server: Any, connect: Clients, to: str) -> None:
    alice = await connect("alice")
    with pytest.raises(ServerError) as info:
        await alice.request("dm", to=to, text="hi")
    assert info.value.code in ("bad_nick", "no_such_user")


async def test_dm_bad_text(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await connect("bob")
    for text in ("", "\x00", "x" * 4001):
        with pytest.raises(ServerError) as info:
            await alice.request("dm", to="bob", text=text)
        assert info.value.code == "bad_text"


async def test_offline_dm_is_delivered_after_welcome_exactly_once(
    server: Any, connect: Clients
) -> None:
    bob = await connect("bob")
    await bob.close()
    alice = await connect("alice")
    first = await alice.request("dm", to="bob", text="while you were out")
    second = await alice.request("dm", to="Bob", text="and again")
    assert (first["seq"], second["seq"]) == (1, 2)
    await next_event(alice, "dm")
    await next_event(alice, "dm")

    raw = await connect.raw()
    resume = (bob.welcome or {})["resume"]  # bob's guest identity is held for him (rev 2)
    raw.send({"type": "hello", "proto": 1, "nick": "bob", "resume": resume, "id": "h"})
    welcome = await raw.recv()
    assert welcome["type"] == "welcome" and welcome["id"] == "h"
    frames = [await raw.recv_skip(), await raw.recv_skip()]
    assert frames == [
        {
            "type": "dm",
            "from": "alice",
            "to": "bob",
            "seq": 1,
            "ts": first["ts"],
            "text": "while you were out",
        },
        {
            "type": "dm",
            "from": "alice",
            "to": "bob",
            "seq": 2,
            "ts": second["ts"],
            "text": "and again",
        },
    ]
    raw.send({"type": "bye"})
    await raw.recv_until_eof()
    await next_event(alice, "offline", skip=frozenset({"online"}))

    # the next hello does not get them again
    bob = await connect("bob")
    third = await alice.request("dm", to="bob", text="third")
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (third["seq"], "third") == (3, "third")
    # they stay in the DM history
    history = await bob.request("history", **{"with": "alice"})
    assert [m["text"] for m in history["messages"]] == ["while you were out", "and again", "third"]


async def test_offline_dm_to_an_account_that_never_logged_in(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    alice = await connect("alice")
    ok = await alice.request("dm", to="admin", text="are you there?")
    admin = await connect("admin", token=admin_token(data_dir))
    event = await next_event(admin, "dm")
    assert event == {
        "type": "dm",
        "from": "alice",
        "to": "admin",
        "seq": ok["seq"],
        "ts": ok["ts"],
        "text": "are you there?",
    }


async def test_dm_reaches_every_session_of_an_account(server: Any, connect: Clients) -> None:
    one = await connect.admin()
    two = await connect.admin()
    alice = await connect("alice")
    ok = await alice.request("dm", to="admin", text="to all of you")
    for conn in (one, two):
        event = await next_event(conn, "dm")
        assert (event["seq"], event["text"]) == (ok["seq"], "to all of you")
    await next_event(alice, "dm")  # her own
    reply = await two.request("dm", to="alice", text="answer")
    for conn in (one, two, alice):
        event = await next_event(conn, "dm")
        assert (event["from"], event["to"], event["seq"]) == ("admin", "alice", reply["seq"])


async def test_dm_sent_while_offline_ones_are_fetched_comes_after_them(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per pair, DMs reach the recipient in seq order, even when a new one is sent while the
    server is still fetching the recipient's undelivered ones at hello."""
    bob = await connect("bob")
    await bob.close()
    alice = await connect("alice")
    first = await alice.request("dm", to="bob", text="while you were out")

    fetched, release = asyncio.Event(), asyncio.Event()
    peek_pending = server.store.peek_pending

    async def gated_peek_pending(ident: str, limit: int) -> Any:
        result = await peek_pending(ident, limit)
        if not fetched.is_set():
            fetched.set()
            await release.wait()  # hold the delivery of the fetched DMs
        return result

    if REDIS_BACKEND_URL is None:
        monkeypatch.setattr(server.store, "peek_pending", gated_peek_pending)
    else:
        # A cluster node reads the queue atomically with coming online (its connect
        # script) and hands it over before anything published later: no fetch to gate.
        fetched.set()
    bob = await connect("bob")  # welcome arrives; the undelivered DM is being fetched
    await asyncio.wait_for(fetched.wait(), TIMEOUT)
    second = await alice.request("dm", to="bob", text="welcome back")
    release.set()
    events = [await next_event(bob, "dm"), await next_event(bob, "dm")]
    assert [(e["seq"], e["text"]) for e in events] == [
        (first["seq"], "while you were out"),
        (second["seq"], "welcome back"),
    ]


def gate_appends(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every message at the store's door: the first event is set when one arrives
    there, and it is stored once the second is set."""
    entered, release = asyncio.Event(), asyncio.Event()
    append = server.store.append

    async def gated_append(draft: Any) -> Any:
        entered.set()
        await release.wait()
        return await append(draft)

    monkeypatch.setattr(server.store, "append", gated_append)
    return entered, release


async def test_dm_to_a_user_coming_online_during_the_send_reaches_them(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = await connect("bob")
    await bob.close()
    alice = await connect("alice")
    entered, release = gate_appends(server, monkeypatch)
    sending = asyncio.ensure_future(alice.request("dm", to="bob", text="hello bob"))
    await asyncio.wait_for(entered.wait(), TIMEOUT)  # bob was offline when alice sent it
    bob = await connect("bob")  # ... and online before it was stored
    await pending_events(bob)  # his hello is over, undelivered DMs included
    release.set()
    ok = await asyncio.wait_for(sending, TIMEOUT)
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (ok["seq"], "hello bob")


@pytest.mark.parametrize("stored", ["before", "after"])
async def test_dm_to_a_guest_between_its_claim_and_its_arrival_reaches_it(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    """A hello that begins a guest identity reads its queue only if a DM may have been queued
    for it since the claim (round 9): a DM sent to the nick after the claim and before the
    session is online, stored before it is online or after, still reaches it."""
    alice = await connect("alice")
    claimed, release = asyncio.Event(), asyncio.Event()
    claim_guest = server.store.claim_guest

    async def gated_claim_guest(nick: str, *args: Any) -> Any:
        claim = await claim_guest(nick, *args)
        if nick == "bob":
            claimed.set()
            await release.wait()  # claimed (the identity exists), not yet online
        return claim

    monkeypatch.setattr(server.store, "claim_guest", gated_claim_guest)
    arriving = asyncio.ensure_future(connect("bob"))
    await asyncio.wait_for(claimed.wait(), TIMEOUT)
    if stored == "before":
        ok = await alice.request("dm", to="bob", text="early")  # queued: bob is not online
        release.set()
    else:
        entered, stored_later = gate_appends(server, monkeypatch)
        sending = asyncio.ensure_future(alice.request("dm", to="bob", text="early"))
        await asyncio.wait_for(entered.wait(), TIMEOUT)  # bob was read, not yet online
        release.set()
        bob = await asyncio.wait_for(arriving, TIMEOUT)
        await pending_events(bob)  # his hello is over
        stored_later.set()
        ok = await asyncio.wait_for(sending, TIMEOUT)
    bob = await asyncio.wait_for(arriving, TIMEOUT)
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (ok["seq"], "early")
    # exactly once: the next DM is the next one he gets
    marker = await alice.request("dm", to="bob", text="marker")
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (marker["seq"], "marker")


@pytest.mark.skipif(REDIS_BACKEND_URL is not None, reason="the queue is read by the cluster")
async def test_a_new_guest_identity_reads_no_queue(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect storm of new guests reads no DM queue (round 9); one coming back does."""
    reads: list[str] = []
    peek_pending = server.store.peek_pending

    async def counting(ident: str, limit: int) -> Any:
        reads.append(ident)
        return await peek_pending(ident, limit)

    monkeypatch.setattr(server.store, "peek_pending", counting)
    bob = await connect("bob")
    await pending_events(bob)
    assert reads == []
    await bob.close()
    bob = await connect("bob")  # continues the identity: its queue is read
    await pending_events(bob)
    assert len(reads) == 1


@pytest.mark.server_config(rate=0)
async def test_pipelined_dms_arrive_in_order_exactly_once(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    alice = await connect.raw()
    await alice.hello("alice")
    carol = await connect.raw()
    await carol.hello("carol")
    for raw, name in ((alice, "a"), (carol, "c")):
        raw.send_bytes(
            b"".join(
                encode_message({"type": "dm", "to": "bob", "text": f"{name}{i}", "id": i})
                for i in range(60)
            )
        )
    events = [await next_event(bob, "dm") for _ in range(120)]
    for sender, name in (("alice", "a"), ("carol", "c")):
        mine = [(e["seq"], e["text"]) for e in events if e["from"] == sender]
        assert mine == [(i + 1, f"{name}{i}") for i in range(60)]
    # none came twice: the next DM bob gets is a new one
    marker = await alice.request({"type": "dm", "to": "bob", "text": "marker", "id": "m"})
    assert marker["seq"] == 61
    event = await next_event(bob, "dm")
    assert (event["seq"], event["text"]) == (61, "marker")
    # and none of them is "undelivered" any more: a new session does not get them again
    await bob.close()
    bob = await connect("bob")
    marker = await carol.request({"type": "dm", "to": "bob", "text": "marker", "id": "m"})
    event = await next_event(bob, "dm")
    assert (event["from"], event["seq"], event["text"]) == ("carol", 61, "marker")
