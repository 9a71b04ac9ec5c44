"""Retention (``retain_messages``, ``retain_days``): history starts at the oldest message kept,
and a seq is never handed out twice, also after a restart. Both backends."""

from __future__ import annotations

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
