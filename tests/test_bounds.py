"""Revision 2 bounds: rooms per user, joins rate-limited, topic length, a paged room list.

The attacks of issue 9, as a guest would run them: 20,000 rooms in seconds, a room list of
18.5 MiB made of long topics.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, RawClient


async def request(raw: RawClient, body: dict[str, Any]) -> dict[str, Any]:
    return await raw.request({"id": "q", **body})


@pytest.mark.server_config(max_rooms=3, rate=0)
async def test_a_user_joins_at_most_max_rooms_and_a_refused_join_creates_no_room(
    server: Any, connect: Clients
) -> None:
    raw = await connect.raw()
    await raw.hello("hoarder")
    for room in ("a", "b", "c"):
        assert (await request(raw, {"type": "join", "room": room}))["type"] == "ok"
    refused = await request(raw, {"type": "join", "room": "d"})
    assert (refused["type"], refused["code"]) == ("error", "limit_reached")
    # Joining a room it is already in is no new membership.
    assert (await request(raw, {"type": "join", "room": "b"}))["type"] == "ok"
    names = [r["room"] for r in (await request(raw, {"type": "rooms"}))["rooms"]]
    assert names == ["a", "b", "c"]
    other = await connect.raw()
    await other.hello("bystander")
    missing = await request(other, {"type": "history", "room": "d"})
    assert missing["code"] == "no_such_room"
    # Parting frees a place.
    assert (await request(raw, {"type": "part", "room": "a"}))["type"] == "ok"
    assert (await request(raw, {"type": "join", "room": "d"}))["type"] == "ok"


async def test_max_rooms_default_is_256(server: Any) -> None:
    assert server.config.max_rooms == 256


@pytest.mark.server_config(rate=1, burst=3)
async def test_joins_count_against_the_say_rate_limit(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("creator")
    for i in range(3):
        raw.send({"type": "join", "room": f"r{i}", "id": i})
    raw.send({"type": "join", "room": "r3", "id": 3})
    replies = {}
    while len(replies) < 4:
        frame = await raw.recv()
        if "id" in frame:
            replies[frame["id"]] = frame.get("code", frame["type"])
    assert replies == {0: "ok", 1: "ok", 2: "ok", 3: "rate_limited"}


async def test_welcome_announces_max_topic(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    welcome = await raw.hello("reader")
    assert welcome["max_topic"] == 500


@pytest.mark.server_config(max_topic=20)
async def test_topic_longer_than_max_topic_is_bad_text_and_empty_clears(
    server: Any, connect: Clients
) -> None:
    raw = await connect.raw()
    await raw.hello("setter")
    await request(raw, {"type": "join", "room": "t"})
    long = await request(raw, {"type": "topic", "room": "t", "text": "x" * 21})
    assert long["code"] == "bad_text"
    assert (await request(raw, {"type": "topic", "room": "t", "text": "x" * 20}))["type"] == "ok"
    assert (await request(raw, {"type": "topic", "room": "t", "text": ""}))["type"] == "ok"
    (entry,) = (await request(raw, {"type": "rooms"}))["rooms"]
    assert entry["topic"] == ""


async def test_a_say_may_still_be_max_text_long(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("writer")
    await request(raw, {"type": "join", "room": "t"})
    assert (await request(raw, {"type": "say", "room": "t", "text": "y" * 4000}))["type"] == "ok"


# 1203 rooms made by one guest: no room-creation budget (tests/test_room_creation.py).
@pytest.mark.server_config(rate=0, max_rooms=0, guest_rooms_per_minute=0)
async def test_rooms_is_paged_by_name(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("lister")
    names = [f"room{i:04d}" for i in range(1203)]
    for name in names:
        raw.send({"type": "join", "room": name})
    await request(raw, {"type": "ping"})  # every join answered before this
    seen: list[str] = []
    after = None
    while True:
        body: dict[str, Any] = {"type": "rooms"}
        if after is not None:
            body["after"] = after
        page = await request(raw, body)
        assert len(page["rooms"]) <= 500
        seen += [r["room"] for r in page["rooms"]]
        if not page["more"]:
            break
        after = page["rooms"][-1]["room"]
    assert seen == names
    small = await request(raw, {"type": "rooms", "after": "#ROOM0100", "limit": 2})
    assert [r["room"] for r in small["rooms"]] == ["room0101", "room0102"]
    assert small["more"] is True
    capped = await request(raw, {"type": "rooms", "limit": 100_000})
    assert len(capped["rooms"]) == 500
    last = await request(raw, {"type": "rooms", "after": "room1202"})
    assert (last["rooms"], last["more"]) == ([], False)
