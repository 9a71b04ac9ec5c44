"""Retention (``retain_messages``, ``retain_days``): history starts at the oldest message kept,
and a seq is never handed out twice, also after a restart. Both backends."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from conftest import RawClient, Servers


async def say(raw: RawClient, text: str) -> int:
    ok = await raw.request({"type": "say", "room": "lobby", "text": text, "id": text})
    return int(ok["seq"])


async def history(raw: RawClient, **anchor: Any) -> list[int]:
    reply = await raw.request({"type": "history", "room": "lobby", "id": "h", **anchor})
    return [m["seq"] for m in reply["messages"]]


#: The guests' resume secrets: the same guest comes back after a restart (rev 2 holds it).
RESUMES: dict[str, str] = {}


async def member(port: int, nick: str) -> RawClient:
    raw = await RawClient.open(port)
    raw.resumes = RESUMES
    await raw.hello(nick)
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    return raw


async def test_retain_messages_keeps_the_newest_and_never_reuses_a_seq(
    servers: Servers,
) -> None:
    server = await servers.start(rate=0, retain_messages=3)
    raw = await member(server.port, "alice")
    assert [await say(raw, f"m{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    assert await server.prune() == 2
    assert await history(raw) == [3, 4, 5]
    assert await history(raw, after=0) == [3, 4, 5]
    assert await say(raw, "m5") == 6
    await raw.close()
    await servers.stop(server)
    server = await servers.start(rate=0, retain_messages=3)  # prunes at start
    raw = await member(server.port, "alice")
    assert await history(raw) == [4, 5, 6]
    assert await say(raw, "m6") == 7
    await raw.close()


async def test_retain_days_prunes_a_stream_empty_and_seq_continues(servers: Servers) -> None:
    server = await servers.start(rate=0, retain_days=1)
    raw = await member(server.port, "bob")
    assert [await say(raw, f"d{i}") for i in range(3)] == [1, 2, 3]
    assert await server.prune(now=time.time() + 86400 / 2) == 0  # not a day old yet
    assert await server.prune(now=time.time() + 2 * 86400) == 3
    assert await history(raw) == []
    join = await raw.request({"type": "join", "room": "lobby", "id": "again"})
    assert join["last_seq"] == 3
    assert await say(raw, "after") == 4
    await raw.close()
    await servers.stop(server)
    server = await servers.start(rate=0)  # retention off: nothing else goes
    raw = await member(server.port, "bob")
    assert await history(raw) == [4]
    assert await say(raw, "later") == 5
    await raw.close()


async def test_no_retention_configured_deletes_nothing(servers: Servers) -> None:
    server = await servers.start(rate=0)
    raw = await member(server.port, "carol")
    await say(raw, "kept")
    assert await server.prune(now=time.time() + 10 * 365 * 86400) == 0
    assert await history(raw) == [1]
    await raw.close()


# -- what pruning leaves behind -----------------------------------------------------------


async def search(raw: RawClient, text: str, **more: Any) -> list[tuple[str, int]]:
    reply = await raw.request({"type": "search", "text": text, "id": f"s-{text}", **more})
    assert reply["type"] == "ok", reply
    return [(m.get("room", ""), m["seq"]) for m in reply["messages"]]


async def busy_room_pruned(servers: Servers) -> tuple[Any, RawClient]:
    """``quiet`` holds one old match; ``busy`` a newer match that retention then prunes,
    with an edit, a delete and reactions of pruned messages."""
    server = await servers.start(rate=0, retain_messages=2)
    raw = await member(server.port, "dora")
    for room in ("quiet", "busy"):
        await raw.request({"type": "join", "room": room, "id": f"j-{room}"})

    async def say_in(room: str, text: str) -> int:
        ok = await raw.request({"type": "say", "room": room, "text": text, "id": text})
        return int(ok["seq"])

    await say_in("quiet", "needle in the quiet room")
    first = await say_in("busy", "needle apple")  # 1
    gone = await say_in("busy", "needle banana")  # 2
    for request in (
        {"type": "edit", "room": "busy", "seq": first, "text": "needle apple edited"},
        {"type": "delete", "room": "busy", "seq": gone},
        {"type": "react", "room": "busy", "seq": first, "emoji": "👍"},
    ):
        assert (await raw.request({**request, "id": request["type"]}))["type"] == "ok"
    await say_in("busy", "chatter one")
    await say_in("busy", "chatter two")  # busy keeps seqs 6 and 7
    assert await server.prune() == 5
    return server, raw


async def test_search_finds_no_pruned_message_and_misses_no_kept_one(servers: Servers) -> None:
    _, raw = await busy_room_pruned(servers)
    assert await search(raw, "apple") == []
    assert await search(raw, "needle") == [("quiet", 1)]
    # The pruned match was newer than the kept one: it must not take the only place.
    assert await search(raw, "needle", limit=1) == [("quiet", 1)]
    await raw.close()


async def test_prune_leaves_no_index_author_delete_or_reaction_state(servers: Servers) -> None:
    server, raw = await busy_room_pruned(servers)
    store = server.store
    if hasattr(store, "redis"):
        prefix, stream = store.keys.prefix, "r:busy"
        by = f"{prefix}by:{stream}"
        assert sorted(int(f) for f in await store.redis.hkeys(by)) == [6, 7]
        assert await store.redis.scard(f"{prefix}del:{stream}") == 0
        assert await store.redis.hlen(f"{prefix}rx:{stream}") == 0
        # A field an earlier version's pruning left behind goes at the next pruning.
        await store.redis.hset(by, "2", "g.stale")
        await raw.request({"type": "say", "room": "busy", "text": "more", "id": "more"})
        assert await server.prune() == 1
        assert sorted(int(f) for f in await store.redis.hkeys(by)) == [7, 8]
        await raw.close()
        return
    await raw.close()
    conn = sqlite3.connect(store.path)
    try:
        rows = conn.execute("SELECT stream, seq FROM search_index ORDER BY stream, seq")
        assert rows.fetchall() == [("r:busy", 6), ("r:busy", 7), ("r:quiet", 1)]
        for table in ("search_rows", "msg_deleted", "reactions"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    finally:
        conn.close()
