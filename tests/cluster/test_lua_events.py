"""Every event the Redis Lua scripts publish decodes into the typed union of server frames.

The scripts build their JSON by hand (atomically with the state change), so they are the one
place events are not built from :mod:`imchat.protocol.events`; this runs each script that
publishes against the real Redis and decodes every payload strictly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from imchat.protocol.events import (
    AnnounceEvent,
    DmEvent,
    JoinedEvent,
    MsgEvent,
    OfflineEvent,
    OnlineEvent,
    PartedEvent,
    decode_event,
)
from imchat.server.redis_fanout import (
    CONNECT_LUA,
    DISCONNECT_LUA,
    JOIN_LUA,
    PART_LUA,
    REAP_LUA,
)
from imchat.server.redis_store import RedisStore
from imchat.server.store import Draft
from imchat.server.streams import StreamId

#: A nick with every character JSON needs escaped that a nick may hold.
ODD = "a\\b"


async def published(store: RedisStore, actions: Any) -> list[Any]:
    """Run ``actions(store)`` and decode the payload of every envelope it published."""
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.keys.channel)
    await pubsub.psubscribe(store.keys.node_channel("*"))
    try:
        count = await actions(store)
        events = []
        deadline = asyncio.get_running_loop().time() + 5.0
        while len(events) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(events)} of {count} came"
            # None for the subscribe confirmation, which is read but not returned.
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            _hold, _op, _recipients, payload = message["data"].split(b"\n", 3)
            if payload:
                events.append(decode_event(payload))
        return events
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_presence_and_membership_scripts_publish_typed_events(store: RedisStore) -> None:
    keys = store.keys

    async def actions(store: RedisStore) -> int:
        script = store.redis.register_script
        node = "n1"
        await store.redis.sadd(keys.nodes, node)
        for nick in (ODD, "bob"):
            await script(CONNECT_LUA)(
                args=[keys.prefix, keys.channel, node, nick.lower(), nick, 0, "", nick.lower()]
            )
        for nick in (ODD, "bob"):
            await script(JOIN_LUA)(
                args=[keys.prefix, keys.channel, nick.lower(), nick, "lobby", ""]
            )
        await script(PART_LUA)(args=[keys.prefix, keys.channel, "bob", "bob", "lobby", ""])
        await script(JOIN_LUA)(args=[keys.prefix, keys.channel, "bob", "bob", "lobby", ""])
        # The odd nick leaves (parted quit to bob, offline); bob's node dies and is reaped.
        await script(DISCONNECT_LUA)(
            args=[keys.prefix, keys.channel, node, ODD.lower(), 1000, ODD.lower()]
        )
        await script(REAP_LUA)(args=[keys.prefix, keys.channel, node, 1000])
        # online x2, joined x2, parted, joined, parted quit + offline (to bob, a room mate);
        # bob alone shares a room and a DM with nobody: his offline goes to no one (rev 2)
        return 8

    events = await published(store, actions)
    assert [type(e) for e in events] == [
        OnlineEvent,
        OnlineEvent,
        JoinedEvent,
        JoinedEvent,
        PartedEvent,
        JoinedEvent,
        PartedEvent,
        OfflineEvent,
    ]
    assert events[0].nick == ODD and events[2].nick == ODD
    assert isinstance(events[6], PartedEvent) and events[6].reason == "quit"
    assert events[6].nick == ODD and events[7].nick == ODD
    assert all(isinstance(e.ts, float | int) and e.ts > 0 for e in events)


async def test_append_script_publishes_typed_messages(store: RedisStore) -> None:
    keys = store.keys
    # Both online on a node (messages go only to nodes hosting a recipient); ODD a member.
    script = store.redis.register_script
    await store.redis.sadd(keys.nodes, "n1")
    for nick in (ODD, "bob"):
        await script(CONNECT_LUA)(
            args=[keys.prefix, keys.channel, "n1", nick.lower(), nick, 0, "", nick.lower()]
        )
    await script(JOIN_LUA)(args=[keys.prefix, keys.channel, ODD.lower(), ODD, "lobby", ""])
    drafts = [
        Draft(
            StreamId.room("lobby"), ODD.lower(), "c1", MsgEvent(room="lobby", from_=ODD, text="hi")
        ),
        Draft(
            StreamId.room("lobby"),
            ODD.lower(),
            None,
            MsgEvent(room="lobby", from_=ODD, text="waves", kind="action"),
        ),
        Draft(
            StreamId.dm(ODD.lower(), "bob"),
            ODD.lower(),
            None,
            DmEvent(from_=ODD, to="bob", text="x"),
        ),
        Draft(StreamId.announcements(), ODD.lower(), None, AnnounceEvent(from_=ODD, text="news")),
    ]

    async def actions(store: RedisStore) -> int:
        for draft in drafts:
            await store.append(draft)
        return len(drafts)

    events = await published(store, actions)
    assert [type(e) for e in events] == [MsgEvent, MsgEvent, DmEvent, AnnounceEvent]
    assert [e.seq for e in events] == [1, 2, 1, 1]
    assert all(e.from_ == ODD and e.ts is not None for e in events)
    assert isinstance(events[1], MsgEvent) and events[1].kind == "action"
    # A repeated cid answers with the stored payload, which decodes the same way.
    again = await store.append(drafts[0])
    assert again.duplicate and decode_event(again.payload) == events[0]


def test_decoding_is_strict_about_what_the_contract_requires() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type":"joined","room":"lobby","ts":1}')  # no nick
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type":"nonsense"}')
