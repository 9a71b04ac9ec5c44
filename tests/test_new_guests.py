"""New guest identities per address are bounded: every ``hello`` that takes a free guest nick
begins an identity the store keeps (held ``guest_hold`` seconds after its last session), and
``hello`` was otherwise free, so one address could begin thousands a second. Beyond the
budget a ``hello`` that would begin an identity is ``rate_limited`` (with ``retry_after``)
and keeps nothing; a guest coming back with its ``resume``, and accounts, spend nothing.
Both backends (``IMCHAT_TEST_BACKEND=redis``)."""

from __future__ import annotations

from typing import Any

from conftest import Clients, RawClient, Servers, admin_token

BUDGET = {"addr_guests_per_minute": 1, "addr_guests_burst": 3}


async def hello(raw: RawClient, nick: str, **fields: Any) -> dict[str, Any]:
    return await raw.request({"type": "hello", "proto": 1, "nick": nick, "id": "h", **fields})


async def test_one_address_begins_a_bounded_number_of_guest_identities(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**BUDGET)
    replies = [await hello(await connect.raw(port=server.port), f"g{i}") for i in range(6)]
    assert [r["type"] for r in replies[:3]] == ["welcome"] * 3
    assert [r.get("code") for r in replies[3:]] == ["rate_limited"] * 3
    assert 0 < replies[3]["retry_after"] <= 60
    # The refused nick was not kept: nobody holds it (a DM to it is no_such_user).
    admin = await connect.raw(port=server.port)
    assert (await hello(admin, "admin", token=admin_token(servers.data_dir)))["type"] == "welcome"
    dm = await admin.request({"type": "dm", "to": "g4", "text": "there?", "id": "d"})
    assert dm["code"] == "no_such_user"


async def test_returning_guests_and_accounts_spend_nothing(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**BUDGET)
    first = await connect.raw(port=server.port)
    welcome = await hello(first, "keeper")
    for _ in range(5):  # the same identity again and again, as after reconnects
        again = await hello(await connect.raw(port=server.port), "keeper", resume=welcome["resume"])
        assert again["type"] == "welcome", again
    for _ in range(5):
        admin = await hello(
            await connect.raw(port=server.port), "admin", token=admin_token(servers.data_dir)
        )
        assert admin["type"] == "welcome", admin
    # "keeper" took one of the three: two more new guests, then none.
    got = [await hello(await connect.raw(port=server.port), f"n{i}") for i in range(3)]
    assert [r.get("code", r["type"]) for r in got] == ["welcome", "welcome", "rate_limited"]


async def test_a_guest_hello_claims_its_nick_without_reading_it_first(
    servers: Servers, connect: Clients
) -> None:
    """A connect storm (10,000 guests at once): each guest's hello read its nick's row on the
    event loop, then the claim read it again in the store's writer. The claim alone decides
    (a nick that is an account's comes back as such), so a guest's hello reads nothing first;
    an account's nick without credentials is still refused, and with them still logs in."""
    server = await servers.start()
    store = server.hub.store
    reads: list[str] = []
    lookup_user = store.lookup_user

    async def counting(key: str) -> Any:
        reads.append(key)
        return await lookup_user(key)

    store.lookup_user = counting
    guest = await connect.raw(port=server.port)
    assert (await hello(guest, "Stormy"))["type"] == "welcome"
    assert reads == []
    again = await connect.raw(port=server.port)
    assert (await hello(again, "stormy"))["code"] == "nick_taken"
    assert reads == []
    admin = await connect.raw(port=server.port)
    assert (await hello(admin, "admin"))["code"] == "auth_failed"
    token = admin_token(servers.data_dir)
    admin = await connect.raw(port=server.port)
    assert (await hello(admin, "admin", token=token))["type"] == "welcome"


async def test_a_new_guest_identity_has_no_dm_peers_to_look_up(
    servers: Servers, connect: Clients
) -> None:
    """Its ``online`` goes to its DM peers, read from the store per hello; an identity this
    hello began has exchanged no DMs yet (as if read when it began), so nothing is read. A
    guest coming back with its resume still tells the peers it has."""
    server = await servers.start()
    store = server.hub.store
    reads: list[str] = []
    dm_streams = store.dm_streams

    async def counting(ident: str) -> Any:
        reads.append(ident)
        return await dm_streams(ident)

    store.dm_streams = counting
    guest = await connect.raw(port=server.port)
    welcome = await hello(guest, "newbie")
    assert welcome["type"] == "welcome" and reads == []
    peer = await connect.raw(port=server.port)
    assert (await hello(peer, "peer"))["type"] == "welcome"
    dm = await peer.request({"type": "dm", "to": "newbie", "text": "hi", "id": "d"})
    assert dm["type"] == "ok"
    await guest.close()
    await server.hub.drain_tasks(10)
    back = await connect.raw(port=server.port)
    assert (await hello(back, "newbie", resume=welcome["resume"]))["type"] == "welcome"
    while (event := await peer.recv())["type"] != "online":
        pass
    assert event["nick"] == "newbie"
