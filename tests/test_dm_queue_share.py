"""An offline user's DM queue is shared out by sender: no one sender can fill it.

The queue holds ``max_queued`` DMs (1,000); one more is ``limit_reached``. A stranger used to
fill it alone, after which nobody could DM that user until it came back. Now each sender may
hold at most ``max_queued_per_sender`` of a recipient's queued DMs; beyond that its DMs get
the error a full queue gives, and other senders' are untouched. Delivery gives the share
back. Both backends (``IMCHAT_TEST_BACKEND=redis``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, Servers, next_event

from imchat.client import Connection, ServerError

NOISE = frozenset({"online", "joined", "parted", "msg", "dm"})


async def refused(conn: Connection, kind: str, **fields: Any) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await asyncio.wait_for(conn.request(kind, **fields), TIMEOUT)
    return caught.value


async def test_one_stranger_cannot_fill_a_users_queue(servers: Servers, connect: Clients) -> None:
    """With the default bounds: a guest sending DMs to an offline user as fast as it may is
    stopped at its share, and a known user's DM is still queued and delivered."""
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
    alice = await connect("alice")
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
    alice = await connect("alice")
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
    carol = await connect("carol")
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
