"""An offline user's DM queue is shared out by sender: no one sender can fill it.

The queue holds ``max_queued`` DMs (1,000); one more is ``limit_reached``. A stranger used to
fill it alone, after which nobody could DM that user until it came back. Now each sender may
hold at most ``max_queued_per_sender`` of a recipient's queued DMs; beyond that its DMs get
the error a full queue gives, and other senders' are untouched. Delivery gives the share
back. A sender is what a stranger cannot multiply: a guest's address (guest nicks are free,
300 a minute per address), an account. Both backends (``IMCHAT_TEST_BACKEND=redis``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, Servers, next_event

from imchat.client import Connection, ServerError
from imchat.protocol import ProtocolError
from imchat.protocol.events import DmEvent
from imchat.server.accounts import add_user
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import Draft
from imchat.server.streams import StreamId

NOISE = frozenset({"online", "joined", "parted", "msg", "dm"})
PASSWORD = "correct horse"
#: Another client address (loopback: 127.0.0.0/8 is all this host's).
ELSEWHERE = "127.0.0.2"


async def refused(conn: Connection, kind: str, **fields: Any) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await asyncio.wait_for(conn.request(kind, **fields), TIMEOUT)
    return caught.value


async def test_one_stranger_cannot_fill_a_users_queue(servers: Servers, connect: Clients) -> None:
    """With the default bounds: a guest sending DMs to an offline user as fast as it may is
    stopped at its share, and another's DM (from another address) is still queued and
    delivered."""
    server = await servers.start(rate=0, addr_rate=0)
    share = server.config.max_queued_per_sender
    assert 0 < share < server.config.max_queued
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    await bob.close()
    stranger = await connect("stranger")
    sent = 0
    while True:
        try:
            await asyncio.wait_for(stranger.request("dm", to="bob", text=f"junk {sent}"), TIMEOUT)
        except ServerError as exc:
            assert exc.code == "limit_reached"
            break
        sent += 1
        assert sent <= server.config.max_queued
    assert sent == share
    alice = await connect("alice", source=ELSEWHERE)
    await alice.request("dm", to="bob", text="hello bob")
    back = await connect("bob", resume=resume)
    texts = [(await next_event(back, "dm"))["text"] for _ in range(share + 1)]
    assert texts[-1] == "hello bob"


async def test_each_sender_has_its_share_and_delivery_returns_it(
    servers: Servers, connect: Clients
) -> None:
    await servers.start(max_queued=4, max_queued_per_sender=2)
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    await bob.close()
    stranger = await connect("stranger")
    alice = await connect("alice", source=ELSEWHERE)
    for text in ("s1", "s2"):
        await stranger.request("dm", to="bob", text=text)
    error = await refused(stranger, "dm", to="bob", text="s3")
    assert error.code == "limit_reached"
    # Nothing was stored for the refused one: the pair's history has two.
    history = await stranger.request("history", **{"with": "bob"})
    assert [m["text"] for m in history["messages"]] == ["s1", "s2"]
    for text in ("a1", "a2"):
        await alice.request("dm", to="bob", text=text)
    # Now the whole queue is full: the old bound still holds for everyone.
    carol = await connect("carol", source="127.0.0.3")
    assert (await refused(carol, "dm", to="bob", text="c1")).code == "limit_reached"
    back = await connect("bob", resume=resume)
    got = sorted([(await next_event(back, "dm"))["text"] for _ in range(4)])
    assert got == ["a1", "a2", "s1", "s2"]
    await back.request("ping")
    await back.close()
    # Delivered DMs leave the queue and their senders' shares.
    assert (await next_event(alice, "offline", skip=NOISE))["nick"] == "bob"
    for text in ("s4", "s5"):
        await stranger.request("dm", to="bob", text=text)
    assert (await refused(stranger, "dm", to="bob", text="s6")).code == "limit_reached"
    await carol.request("dm", to="bob", text="c2")


async def test_zero_share_means_only_the_queue_bound(servers: Servers, connect: Clients) -> None:
    await servers.start(max_queued=3, max_queued_per_sender=0)
    bob = await connect("bob")
    await bob.close()
    alice = await connect("alice")
    for text in ("1", "2", "3"):
        await alice.request("dm", to="bob", text=text)
    assert (await refused(alice, "dm", to="bob", text="4")).code == "limit_reached"


async def offline(connect: Clients, nick: str) -> str:
    """``nick`` says hello and leaves; its guest ``resume`` secret."""
    conn = await connect(nick)
    resume = str((conn.welcome or {})["resume"])
    await conn.close()
    return resume


async def fill(conn: Connection, to: str, tries: int) -> int:
    """DMs from ``conn`` to ``to`` until one is refused (``limit_reached``) or ``tries``
    were queued; how many were queued."""
    for sent in range(tries):
        try:
            await asyncio.wait_for(conn.request("dm", to=to, text=f"dm {sent}"), TIMEOUT)
        except ServerError as exc:
            assert exc.code == "limit_reached", exc
            return sent
    return tries


async def test_guests_of_one_address_share_one_share(servers: Servers, connect: Clients) -> None:
    """Guest nicks are free (an address may begin 300 a minute), so a share per nick let one
    address fill the whole queue with enough nicks. Its guests together hold one share; a
    guest elsewhere, and an account from the same address, still reach the user."""
    server = await servers.start(max_queued=20, max_queued_per_sender=3)
    await add_user(server.store, "friend", PASSWORD)
    resume = await offline(connect, "bob")
    queued = 0
    for n in range(5):
        guest = await connect(f"stranger{n}")
        queued += await fill(guest, "bob", 3)
    assert queued == 3
    # Refused before anything was stored: the refused nicks have no history with bob.
    history = await guest.request("history", **{"with": "bob"})
    assert history["messages"] == []
    elsewhere = await connect("neighbour", source=ELSEWHERE)
    assert await fill(elsewhere, "bob", 4) == 3
    friend = await connect("friend", password=PASSWORD)  # an account, from 127.0.0.1 too
    assert await fill(friend, "bob", 4) == 3
    back = await connect("bob", resume=resume)
    got = [(await next_event(back, "dm"))["from"] for _ in range(9)]
    assert sorted(set(got)) == ["friend", "neighbour", "stranger0"]


async def test_an_accounts_sessions_share_its_share(servers: Servers, connect: Clients) -> None:
    """An account is one sender wherever it logs in from (its share is not its address's)."""
    server = await servers.start(max_queued=20, max_queued_per_sender=2)
    await add_user(server.store, "friend", PASSWORD)
    await offline(connect, "bob")
    here = await connect("friend", password=PASSWORD)
    assert await fill(here, "bob", 1) == 1
    there = await connect("friend", password=PASSWORD, source=ELSEWHERE)
    assert await fill(there, "bob", 3) == 1


async def test_an_addresss_share_outlives_a_restart(servers: Servers, connect: Clients) -> None:
    """The queue is durable, and so is whose share each queued DM is: a restart gives the
    address nothing back."""
    server = await servers.start(max_queued=20, max_queued_per_sender=2)
    resume = await offline(connect, "bob")
    assert await fill(await connect("stranger1"), "bob", 3) == 2
    await connect.close()
    connect.opened.clear()
    await servers.stop(server)
    await servers.start(max_queued=20, max_queued_per_sender=2)
    assert await fill(await connect("stranger2"), "bob", 1) == 0
    assert await fill(await connect("neighbour", source=ELSEWHERE), "bob", 1) == 1
    back = await connect("bob", resume=resume)
    got = [(await next_event(back, "dm"))["from"] for _ in range(3)]
    assert got == ["stranger1", "stranger1", "neighbour"]


def queued_dm(sender: str, source: str) -> Draft:
    return Draft(
        StreamId.dm(sender, "bob"),
        sender,
        None,
        DmEvent(from_=sender, to="bob", text="hi"),
        "bob",
        owner=sender,
        dm_idents=(sender, "bob"),
        recipient_ident="bob",
        max_queued=9,
        max_queued_per_sender=2,
        queue_source=source,
    )


async def test_a_sqlite_queue_from_before_sources_opens(tmp_path: Path) -> None:
    """A data dir whose ``dm_queue`` has no ``source`` column (an earlier version's) gets
    one; the DMs queued before count against the whole queue, and no one's share."""
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    for _ in range(2):
        await store.append(queued_dm("amy", "a:192.0.2.1"))
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX dm_queue_source")
    conn.execute("ALTER TABLE dm_queue DROP COLUMN source")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        for _ in range(2):
            await store.append(queued_dm("cy", "a:192.0.2.1"))
        with pytest.raises(ProtocolError) as caught:
            await store.append(queued_dm("cy", "a:192.0.2.1"))
        assert caught.value.code == "limit_reached"
        assert len(await store.peek_pending("bob", 100)) == 4
    finally:
        await store.close()
