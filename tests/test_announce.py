"""Announcements: admins only, one seq of their own, to every online session, `delivered`."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, admin_token, assert_ts, next_event, pending_events

from imchat.client import ServerError


async def test_announce_reaches_every_online_session(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    admin = await connect.admin()
    admin2 = await connect.admin()
    alice = await connect("alice")
    bob = await connect("bob")
    anonymous = await connect()  # not logged in: no session of any user
    raw = await connect.raw()
    await raw.hello("carol")
    raw.send({"type": "announce", "text": "x", "id": "not admin"})
    assert (await raw.recv_skip())["code"] == "forbidden"

    raw_admin = await connect.raw()
    await raw_admin.hello("admin", token=admin_token(data_dir))
    raw_admin.send({"type": "announce", "text": "maintenance at 5", "id": 1})
    ok = await raw_admin.recv_skip()
    assert set(ok) == {"type", "id", "seq", "ts", "delivered"}
    assert (ok["type"], ok["id"], ok["seq"]) == ("ok", 1, 1)
    assert ok["delivered"] == 6  # admin x3, alice, bob, carol; not the anonymous one
    assert_ts(ok["ts"])
    expected = {
        "type": "announce",
        "from": "admin",
        "seq": 1,
        "ts": ok["ts"],
        "text": "maintenance at 5",
    }
    # the reply comes before the event it caused
    assert await raw_admin.recv_skip() == expected
    assert await raw.recv_skip() == expected
    for conn in (admin, admin2, alice, bob):
        assert await next_event(conn, "announce") == expected
    assert await pending_events(anonymous) == []


async def test_only_admins_announce(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    with pytest.raises(ServerError) as info:
        await alice.request("announce", text="I am in charge")
    assert info.value.code == "forbidden"
    assert await pending_events(bob) == []
    history = await bob.request("history", announcements=True)
    assert history["messages"] == []


async def test_announcement_seq_and_history(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    alice = await connect("alice")
    oks = [await admin.request("announce", text=f"notice {i}") for i in range(3)]
    assert [ok["seq"] for ok in oks] == [1, 2, 3]
    events = [await next_event(alice, "announce") for _ in range(3)]
    history = await alice.request("history", announcements=True)
    assert history["messages"] == events


async def test_announce_bad_text(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    for text in ("", "\x1b", "x" * 4001):
        with pytest.raises(ServerError) as info:
            await admin.request("announce", text=text)
        assert info.value.code == "bad_text"
