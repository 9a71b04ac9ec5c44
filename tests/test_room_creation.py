"""Room creation is bounded for strangers: a join that would create a room spends a budget of
the guest identity and of its address, and guests create rooms only below a server-wide cap.

Rooms are durable (a room exists from its first join and keeps its history), so without a
bound one guest grew the store and the room list by about 20 rooms a second. Joining a room
that exists costs nothing of these budgets; accounts and admins have none. Both backends
(``IMCHAT_TEST_BACKEND=redis``); the IRC path is in ``tests/irc/test_irc_room_budget.py``.
"""

from __future__ import annotations

from typing import Any

from conftest import Clients, RawClient, Servers, admin_token

from imchat.server.accounts import add_user, create_token

#: The per-session and per-address message budgets generous, so only room budgets refuse.
OPEN = {"rate": 1000.0, "burst": 1000, "addr_rate": 0}


async def create(raw: RawClient, room: str) -> dict[str, Any]:
    return await raw.request({"type": "join", "room": room, "id": room})


async def codes(raw: RawClient, rooms: list[str]) -> list[str]:
    return [str((await create(raw, room)).get("code", "ok")) for room in rooms]


async def test_a_guest_cannot_create_rooms_without_bound(
    servers: Servers, connect: Clients
) -> None:
    """With the defaults: a guest creating 100 rooms in a row is stopped after its burst."""
    server = await servers.start(**OPEN)
    raw = await connect.raw(port=server.port)
    await raw.hello("stranger")
    got = await codes(raw, [f"junk{i}" for i in range(100)])
    burst = server.config.guest_rooms_burst
    assert got[:burst] == ["ok"] * burst
    assert set(got[burst:]) == {"rate_limited"}
    refused = await create(raw, "junk-more")
    assert refused["code"] == "rate_limited"
    # A retry hint (an extension of the error frame): when one more room may be created.
    assert 0 < refused["retry_after"] <= 60 / server.config.guest_rooms_per_minute
    listed = await raw.request({"type": "rooms", "id": "list"})
    assert len(listed["rooms"]) == burst


async def test_joining_existing_rooms_costs_no_creation_budget(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**OPEN, guest_rooms_burst=2)
    admin = await connect.raw(port=server.port)
    await admin.hello("admin", token=admin_token(servers.data_dir))
    assert await codes(admin, [f"room{i}" for i in range(10)]) == ["ok"] * 10
    guest = await connect.raw(port=server.port)
    await guest.hello("guest")
    assert await codes(guest, [f"room{i}" for i in range(10)]) == ["ok"] * 10
    assert await codes(guest, ["new1", "new2", "new3"]) == ["ok", "ok", "rate_limited"]


async def test_the_address_budget_is_shared_by_its_guest_identities(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(
        **OPEN, guest_rooms_burst=100, addr_rooms_per_minute=2, addr_rooms_burst=5
    )
    got = []
    for i in range(3):
        raw = await connect.raw(port=server.port)
        await raw.hello(f"g{i}")
        got += await codes(raw, [f"g{i}-a", f"g{i}-b", f"g{i}-c"])
    assert got == ["ok"] * 5 + ["rate_limited"] * 4


async def test_a_refused_join_creates_no_room(servers: Servers, connect: Clients) -> None:
    server = await servers.start(**OPEN, guest_rooms_burst=1)
    raw = await connect.raw(port=server.port)
    await raw.hello("guest")
    assert await codes(raw, ["first", "second"]) == ["ok", "rate_limited"]
    history = await raw.request({"type": "history", "room": "second", "id": "h"})
    assert history["code"] == "no_such_room"
    listed = await raw.request({"type": "rooms", "id": "list"})
    assert [r["room"] for r in listed["rooms"]] == ["first"]


async def test_guests_create_rooms_only_below_the_server_cap(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**OPEN, guest_room_cap=3)
    guest = await connect.raw(port=server.port)
    await guest.hello("guest")
    assert await codes(guest, ["a", "b", "c", "d"]) == ["ok", "ok", "ok", "limit_reached"]
    # Rooms that exist stay open to everyone; accounts still create rooms.
    other = await connect.raw(port=server.port)
    await other.hello("other")
    assert await codes(other, ["a", "e"]) == ["ok", "limit_reached"]
    admin = await connect.raw(port=server.port)
    await admin.hello("admin", token=admin_token(servers.data_dir))
    assert await codes(admin, ["e", "f"]) == ["ok", "ok"]


async def test_accounts_have_no_creation_budget(servers: Servers, connect: Clients) -> None:
    server = await servers.start(**OPEN, guest_rooms_burst=1, addr_rooms_burst=1)
    await add_user(server.store, "carol", None)
    token = await create_token(server.store, "carol")
    carol = await connect.raw(port=server.port)
    await carol.hello("carol", token=token)
    assert await codes(carol, [f"c{i}" for i in range(30)]) == ["ok"] * 30


async def test_budgets_can_be_switched_off(servers: Servers, connect: Clients) -> None:
    server = await servers.start(
        **OPEN, guest_rooms_per_minute=0, addr_rooms_per_minute=0, guest_room_cap=0
    )
    raw = await connect.raw(port=server.port)
    await raw.hello("guest")
    assert await codes(raw, [f"r{i}" for i in range(60)]) == ["ok"] * 60


async def test_listing_rooms_spends_the_message_rate_limit(
    servers: Servers, connect: Clients
) -> None:
    """``rooms`` reads every room (Redis: three commands a room), and up to ``guest_room_cap``
    rooms may exist: a stranger repeating it without bound made each request that much work
    for the server. It spends the session's (and address's) message budget, like ``search``."""
    server = await servers.start(rate=0.001, burst=3, addr_rate=0)
    raw = await connect.raw(port=server.port)
    await raw.hello("lister")
    got = [(await raw.request({"type": "rooms", "id": i})).get("code", "ok") for i in range(5)]
    assert got == ["ok", "ok", "ok", "rate_limited", "rate_limited"]


async def test_a_rooms_page_reads_only_the_rooms_it_shows(
    servers: Servers, connect: Clients, monkeypatch: Any
) -> None:
    """The room list may hold ``guest_room_cap`` rooms and more: a page must cost the server
    the page, not every room (on Redis a ``rooms`` of 5,000 rooms took 180 times as long as
    one of 10: three commands per room). Neither every room's record nor every room's
    member count is read for one page."""
    server = await servers.start(**OPEN, guest_rooms_per_minute=0)
    raw = await connect.raw(port=server.port)
    await raw.hello("lister")
    assert await codes(raw, [f"r{i}" for i in range(12)]) == ["ok"] * 12

    async def every_room(*args: Any) -> Any:
        raise AssertionError("read every room for one page")

    monkeypatch.setattr(server.store, "rooms", every_room)
    real_counts = server.hub.fanout.member_counts

    async def counts(rooms: Any = None) -> Any:
        if rooms is None:
            raise AssertionError("counted the members of every room for one page")
        assert len(rooms) <= 5
        return await real_counts(rooms)

    monkeypatch.setattr(server.hub.fanout, "member_counts", counts)
    page = await raw.request({"type": "rooms", "after": "r1", "limit": 5, "id": "p"})
    assert [(r["room"], r["count"]) for r in page["rooms"]] == [
        ("r10", 1),
        ("r11", 1),
        ("r2", 1),
        ("r3", 1),
        ("r4", 1),
    ]
    assert page["more"] is True
    last = await raw.request({"type": "rooms", "after": "r8", "id": "q"})
    assert [r["room"] for r in last["rooms"]] == ["r9"]
    assert last["more"] is False


async def test_a_crowd_joining_a_new_room_at_once_spends_one_creation(
    servers: Servers, connect: Clients
) -> None:
    """Joins that race to a room that does not exist yet create it once and spend one token:
    a crowd behind one address following a link to a new room is not refused (before, every
    join that found no room spent a token of the address, and most of the crowd was refused)."""
    server = await servers.start(**OPEN, addr_rooms_per_minute=1, addr_rooms_burst=2)
    crowd = []
    for i in range(30):
        raw = await connect.raw(port=server.port)
        await raw.hello(f"c{i}")
        crowd.append(raw)
    for raw in crowd:
        raw.send({"type": "join", "room": "launch", "id": "j"})
    replies = [await raw.recv_skip(frozenset({"online", "offline", "joined"})) for raw in crowd]
    assert [r["type"] for r in replies] == ["ok"] * 30, replies
    # One token of two spent: the address creates one more room, then none.
    assert await codes(crowd[0], ["second", "third"]) == ["ok", "rate_limited"]
