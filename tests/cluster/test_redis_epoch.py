"""The detection of lost writes (imchat.server.redis_epoch), in-process against the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from imchat.server.redis_epoch import SeenSeqs, stream_of, verify_epoch

from .cluster_support import REDIS_URL, delete_keys


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()
        delete_keys(prefix)


async def _store(redis: aioredis.Redis, prefix: str, stream: str, payloads: list[bytes]) -> None:
    """What the append script leaves: the last seq and the messages scored by seq."""
    await redis.hset(f"{prefix}seq", stream, len(payloads))
    for seq, payload in enumerate(payloads, 1):
        await redis.zadd(f"{prefix}m:{stream}", {payload: seq})


def test_seen_keeps_the_newest_seq_of_the_most_recently_written_streams() -> None:
    seen = SeenSeqs(limit=2)
    seen.note("r:a", 5, b"a5")
    seen.note("r:b", 1, b"b1")
    seen.note("r:a", 4, b"a4")  # older than what it has: kept, but a is now the most recent
    seen.note("r:c", 1, b"c1")  # over the limit: b, the least recently written, goes
    assert sorted((s, q) for s, q, _ in seen.items()) == [("r:a", 5), ("r:c", 1)]


def test_events_read_from_the_channel_are_parsed_when_checked() -> None:
    seen = SeenSeqs(recent=2)
    seen.note_event(b'{"type":"msg","room":"old","from":"a","text":"x","seq":1,"ts":1}')
    seen.note_event(b'{"type":"msg","room":"lobby","from":"a","text":"x","seq":7,"ts":1}')
    seen.note_event(b'{"type":"online","nick":"a","ts":1}')  # the oldest event goes
    assert [(s, q) for s, q, _ in seen.items()] == [("r:lobby", 7)]


def test_stream_of_published_events() -> None:
    assert stream_of(b'{"type":"msg","room":"lobby","from":"a","text":"x","seq":3,"ts":1}') == (
        "r:lobby",
        3,
    )
    dm = b'{"type":"dm","from":"Zed","to":"amy","text":"x","seq":2,"ts":1}'
    assert stream_of(dm) == ("d:amy zed", 2)
    assert stream_of(b'{"type":"announce","from":"a","text":"x","seq":9,"ts":1}') == ("a", 9)
    # A read marker has a seq but is no stored message; presence has none.
    assert stream_of(b'{"type":"marker","room":"lobby","seq":4}') is None
    assert stream_of(b'{"type":"online","nick":"a","ts":1}') is None
    assert stream_of(b"not json") is None


async def test_a_stream_behind_rotates_the_epoch_once_for_every_node(
    redis: aioredis.Redis, prefix: str
) -> None:
    await redis.set(f"{prefix}epoch", "old")
    await _store(redis, prefix, "r:lobby", [b"m1", b"m2"])
    nodes = [SeenSeqs(), SeenSeqs()]
    for seen in nodes:
        seen.note("r:lobby", 3, b"m3")  # acknowledged, then lost with the primary
    epochs = await asyncio.gather(*(verify_epoch(redis, prefix, "old", s) for s in nodes))
    assert epochs[0] == epochs[1] != "old"
    assert (await redis.get(f"{prefix}epoch")).decode() == epochs[0]
    assert all(len(seen) == 0 for seen in nodes)  # those seqs belong to the old epoch


async def test_a_stream_that_caught_up_with_other_messages_rotates_the_epoch(
    redis: aioredis.Redis, prefix: str
) -> None:
    await redis.set(f"{prefix}epoch", "old")
    await _store(redis, prefix, "d:amy bob", [b"m1", b"new2", b"new3"])
    seen = SeenSeqs()
    seen.note("d:amy bob", 2, b"lost2")
    assert await verify_epoch(redis, prefix, "old", seen) != "old"


async def test_what_redis_still_has_or_pruned_keeps_the_epoch(
    redis: aioredis.Redis, prefix: str
) -> None:
    await redis.set(f"{prefix}epoch", "old")
    await _store(redis, prefix, "r:lobby", [b"m1", b"m2", b"m3"])
    await redis.zremrangebyscore(f"{prefix}m:r:lobby", 1, 2)  # retention pruned 1 and 2
    seen = SeenSeqs()
    seen.note("r:lobby", 2, b"m2")
    seen.note("a", 3, b"elsewhere")  # not in Redis at all: lost
    seen2 = SeenSeqs()
    seen2.note("r:lobby", 3, b"m3")
    assert await verify_epoch(redis, prefix, "old", seen2) == "old"
    assert await verify_epoch(redis, prefix, "old", seen) != "old"


async def test_an_empty_redis_gets_a_new_epoch(redis: aioredis.Redis, prefix: str) -> None:
    seen = SeenSeqs()
    seen.note("r:lobby", 3, b"m3")
    epoch = await verify_epoch(redis, prefix, "before-the-restart", seen)
    assert epoch != "before-the-restart"
    assert (await redis.get(f"{prefix}epoch")).decode() == epoch
