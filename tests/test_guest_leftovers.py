"""A guest identity that ends leaves nothing behind that a stranger could pile up.

Each ``hello`` with a new guest nick begins an identity; a stranger can open and close
connections with a new nick each time, without bound. What the store keeps for an identity
must therefore go when its hold ends (rev 2: "gone for good"): on SQLite its ``users`` row
and its read markers, on Redis its ``markers:`` hash (its queue, DM view and cids went
already), and Redis keeps no ``user:`` record of a guest at all. Messages it stored stay:
they are history. Its DM peers still read their DM history with it. Both backends
(``IMCHAT_TEST_BACKEND=redis``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from conftest import Clients, RawClient, Servers


async def quits(watcher: RawClient, nick: str) -> None:
    """Until ``watcher`` sees ``nick`` part with ``quit``: its leave (and, with a hold of 0,
    the end of its identity) is done by then."""
    while True:
        frame = await watcher.recv()
        if frame.get("type") == "parted" and frame.get("nick") == nick:
            return


async def visit(connect: Clients, port: int, nick: str, watcher: RawClient) -> None:
    """A guest that joins, says, marks what it read, and goes."""
    raw = await connect.raw(port=port)
    await raw.hello(nick)
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    said = await raw.request({"type": "say", "room": "lobby", "text": "hi", "id": "s"})
    mark = {"type": "mark", "room": "lobby", "seq": said["seq"], "id": "m"}
    assert (await raw.request(mark))["type"] == "ok"
    await raw.close()
    await quits(watcher, nick)


async def leftovers(server: Any) -> dict[str, int]:
    store = server.store
    if hasattr(store, "redis"):
        redis, prefix = store.redis, store.keys.prefix
        markers = [k async for k in redis.scan_iter(match=f"{prefix}markers:*")]
        users = [
            k
            async for k in redis.scan_iter(match=f"{prefix}user:*")
            if await redis.hget(k, "account") != b"1"
        ]
        return {"users": len(users), "markers": len(markers)}
    conn = sqlite3.connect(store.path)
    try:
        users = conn.execute("SELECT COUNT(*) FROM users WHERE account = 0").fetchone()[0]
        markers = conn.execute("SELECT COUNT(*) FROM read_markers").fetchone()[0]
    finally:
        conn.close()
    return {"users": users, "markers": markers}


async def test_strangers_who_come_and_go_leave_no_rows(servers: Servers, connect: Clients) -> None:
    server = await servers.start(guest_hold=0, rate=0)
    watcher = await connect.raw(port=server.port)
    await watcher.hello("admin", token=(servers.data_dir / "admin.token").read_text().strip())
    await watcher.request({"type": "join", "room": "lobby", "id": "j"})
    for i in range(20):
        await visit(connect, server.port, f"stranger{i}", watcher)
    found = await leftovers(server)
    assert set(found.values()) == {0}, found


async def test_a_gone_guests_dm_peer_still_reads_their_dm_history(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(guest_hold=0, rate=0)
    admin = await connect.raw(port=server.port)
    await admin.hello("admin", token=(servers.data_dir / "admin.token").read_text().strip())
    await admin.request({"type": "join", "room": "lobby", "id": "j"})
    guest = await connect.raw(port=server.port)
    await guest.hello("Visitor")
    await guest.request({"type": "join", "room": "lobby", "id": "j"})
    sent = await guest.request({"type": "dm", "to": "admin", "text": "hello admin", "id": "d"})
    assert sent["type"] == "ok", sent
    await guest.close()
    await quits(admin, "Visitor")
    reply = await admin.request({"type": "history", "with": "visitor", "id": "h"})
    assert [m["text"] for m in reply["messages"]] == ["hello admin"], reply
    # The identity is gone for good: a DM to it is no_such_user.
    gone = await admin.request({"type": "dm", "to": "visitor", "text": "still there?", "id": "x"})
    assert gone["code"] == "no_such_user"


async def test_rows_earlier_versions_kept_for_gone_guests_go_at_start(servers: Servers) -> None:
    """Before, a gone guest's ``users`` row stayed (ident NULL): a start sweeps them (SQLite;
    Redis never had them, see docs/redis.md)."""
    server = await servers.start()
    if hasattr(server.store, "redis"):
        return
    path = server.store.path
    await servers.stop(server)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO users (key, nick, created) VALUES (?, ?, 0)",
            [(f"old{i}", f"Old{i}") for i in range(5)],
        )
    conn.close()
    server = await servers.start()
    assert (await leftovers(server))["users"] == 0
