"""The node's raw Redis readers (imchat.server.redis_raw), in-process against the real Redis.

They replace redis-py's per-reply layers on the hot paths, so what they return must be what
redis-py would have: these compare them with it, and check that they are used at all (a
silent fallback would keep every test green and lose the gain).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import Clients, Servers, join, next_event
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

from imchat.server.redis_raw import (
    PushedSubscription,
    RawLink,
    push_subscription,
    raw_execute,
    raw_subscription,
)
from imchat.server.redis_store import connect_redis

from .cluster_support import REDIS_URL, delete_keys

pytestmark = pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="the raw readers need hiredis")


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(REDIS_URL, prefix=prefix)
    try:
        yield client
    finally:
        await client.aclose()
        delete_keys(prefix)


def record(redis: aioredis.Redis, prefix: str) -> aioredis.client.Pipeline:
    pipe = redis.pipeline(transaction=False)
    pipe.hset(f"{prefix}h", mapping={"a": "1", "b": "2"})
    pipe.hgetall(f"{prefix}h")
    pipe.evalsha("0" * 40, 0)  # no such script: NOSCRIPT in its place
    pipe.lpush(f"{prefix}h", "x")  # wrong type: an error in its place, the rest still read
    pipe.ping()
    pipe.execute_command("EVAL", "return 'a\\nb'", 0)
    return pipe


async def test_a_batch_reads_as_redis_py_reads_it(redis: aioredis.Redis, prefix: str) -> None:
    expected = await record(redis, prefix).execute(raise_on_error=False)
    await redis.delete(f"{prefix}h")
    got = await raw_execute(redis, record(redis, prefix).command_stack)
    assert got is not None, "the raw path was not taken"
    assert [type(r) for r in got] == [type(r) for r in expected]
    assert [r for r in got if not isinstance(r, Exception)] == [
        r for r in expected if not isinstance(r, Exception)
    ]
    assert got[1] == {b"a": b"1", b"b": b"2"}
    assert isinstance(got[2], NoScriptError)
    assert isinstance(got[3], ResponseError)
    assert got[4] is True and got[5] == b"a\nb"
    # The connection is in step: the next command reads its own reply.
    assert await redis.hget(f"{prefix}h", "a") == b"1"


async def test_a_timed_out_batch_drops_its_connection(redis: aioredis.Redis, prefix: str) -> None:
    """A reply that comes after the timeout must not be read as the next command's."""
    pipe = redis.pipeline(transaction=False)
    pipe.blpop([f"{prefix}empty"], timeout=1)  # answers after 1 s
    pool = redis.connection_pool
    connection = await pool.get_connection()
    connection.socket_timeout = 0.2
    await pool.release(connection)
    with pytest.raises(TimeoutError):
        await raw_execute(redis, pipe.command_stack)
    assert not connection.is_connected
    connection.socket_timeout = 5.0
    await redis.set(f"{prefix}k", "v")
    assert await redis.get(f"{prefix}k") == b"v"


async def test_a_link_sends_every_batch_on_its_one_connection(
    redis: aioredis.Redis, prefix: str
) -> None:
    """The ordered pipeline's :class:`RawLink`: batch after batch on one connection, each
    reading its own replies, and the connection back in the pool at close."""
    link = RawLink(redis)
    pool: Any = redis.connection_pool
    expected = await record(redis, prefix).execute(raise_on_error=False)
    await redis.delete(f"{prefix}h")
    for _ in range(3):
        got = await link.execute(record(redis, prefix).command_stack)
        assert got is not None, "the raw path was not taken"
        assert [type(r) for r in got] == [type(r) for r in expected]
        assert got[1] == {b"a": b"1", b"b": b"2"} and got[5] == b"a\nb"
        await redis.delete(f"{prefix}h")
    assert len(pool._in_use_connections) == 1, "one connection, held between batches"
    await link.close()
    assert not pool._in_use_connections


async def test_a_link_reconnects_after_a_failed_batch_and_a_dropped_pool(
    redis: aioredis.Redis, prefix: str
) -> None:
    """A timed-out batch disconnects the link's connection (its late reply must not be read
    as the next batch's); so does the node dropping the pool when it loses Redis. The next
    batch connects again and reads its own replies."""
    link = RawLink(redis)
    pipe = redis.pipeline(transaction=False)
    pipe.set(f"{prefix}k", "v")
    assert await link.execute(pipe.command_stack) == [True]
    connection = link._connection
    assert connection is not None and connection.is_connected
    slow = redis.pipeline(transaction=False)
    slow.blpop([f"{prefix}empty"], timeout=1)  # answers after 1 s
    connection.socket_timeout = 0.2
    with pytest.raises(TimeoutError):
        await link.execute(slow.command_stack)
    assert not connection.is_connected
    connection.socket_timeout = 5.0
    again = redis.pipeline(transaction=False)
    again.get(f"{prefix}k")
    again.ping()
    assert await link.execute(again.command_stack) == [b"v", True]
    await redis.connection_pool.disconnect()
    assert not connection.is_connected
    assert await link.execute(again.command_stack) == [b"v", True]
    assert link._connection is connection
    await link.close()


async def test_the_subscription_is_read_in_chunks(prefix: str) -> None:
    client = connect_redis(REDIS_URL, blocking=True, prefix=prefix)
    publisher = aioredis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(f"{prefix}ch")
        raw = raw_subscription(pubsub)
        assert raw is not None, "the raw path was not taken"
        for i in range(50):
            await publisher.publish(f"{prefix}ch", f"m{i}")
        got: list[bytes] = []
        kinds: set[bytes] = set()
        while len(got) < 50:
            for message in raw.messages():
                kinds.add(message[0])
                if message[0] == b"message":
                    got.append(message[2])
            if len(got) < 50:
                await asyncio.wait_for(raw.fill(), 5)
        assert got == [f"m{i}".encode() for i in range(50)]
        assert kinds == {b"subscribe", b"message"}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
        await publisher.aclose()


@pytest.mark.both_loops
async def test_a_taken_over_subscription_hands_on_each_chunk_in_order(prefix: str) -> None:
    """:func:`push_subscription`: what redis-py had already read is handed on at the first
    poll, then every chunk as it arrives, in publish order; Redis closing the connection ends
    it, and redis-py's own close still works (its protocol hears of the loss)."""
    client = connect_redis(REDIS_URL, blocking=True, prefix=prefix)
    publisher = aioredis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    got: list[bytes] = []
    kinds: set[bytes] = set()
    arrived = asyncio.Event()
    pushed: PushedSubscription | None = None

    def take() -> None:
        assert pushed is not None
        for message in pushed.messages():
            # A PING's reply is a plain PONG (not a list) on this connection.
            kinds.add(message if isinstance(message, bytes) else message[0])
            if message[0] == b"message":
                got.append(message[2])
        arrived.set()

    try:
        await pubsub.subscribe(f"{prefix}ch")
        for i in range(5):  # before the take-over: read into redis-py's stream meanwhile
            await publisher.publish(f"{prefix}ch", f"m{i}")
        await publisher.ping()
        pushed = push_subscription(pubsub, take)
        assert pushed is not None, "the subscription was not taken over"
        pushed.poll()
        assert got == [f"m{i}".encode() for i in range(5)]
        for i in range(5, 200):
            await publisher.publish(f"{prefix}ch", f"m{i}")
        while len(got) < 200:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert got == [f"m{i}".encode() for i in range(200)]
        assert kinds == {b"subscribe", b"message"}
        assert not pushed.ended.done()
        await pubsub.ping()  # redis-py still writes on it; the reply comes as a message
        while b"PONG" not in kinds:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        name = f"{prefix}sub"
        await pubsub.execute_command("CLIENT", "SETNAME", name)
        clients = await publisher.client_list()
        killed = [c["id"] for c in clients if c.get("name") == name]
        assert killed
        await publisher.execute_command("CLIENT", "KILL", "ID", killed[0])
        reason = await asyncio.wait_for(asyncio.shield(pushed.ended), 5)
        assert isinstance(reason, RedisConnectionError), reason
        await publisher.publish(f"{prefix}ch", "after")
    finally:
        await asyncio.wait_for(pubsub.aclose(), 5)  # type: ignore[no-untyped-call]
        await client.aclose()
        await publisher.aclose()


@pytest.mark.both_loops
async def test_an_error_while_handing_on_ends_the_subscription(prefix: str) -> None:
    """An exception from the node's handler ends the subscription with it (the node then
    starts over), and nothing more is handed on."""
    client = connect_redis(REDIS_URL, blocking=True, prefix=prefix)
    publisher = aioredis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    calls: list[int] = []
    pushed: PushedSubscription | None = None

    def take() -> None:
        assert pushed is not None
        for message in pushed.messages():
            if message[0] == b"message":
                calls.append(1)
                raise ValueError("the node failed")

    try:
        await pubsub.subscribe(f"{prefix}ch")
        pushed = push_subscription(pubsub, take)
        assert pushed is not None
        pushed.poll()
        await publisher.publish(f"{prefix}ch", "one")
        reason = await asyncio.wait_for(asyncio.shield(pushed.ended), 5)
        assert isinstance(reason, ValueError)
        await publisher.publish(f"{prefix}ch", "two")
        await publisher.ping()
        await pubsub.ping()
        assert calls == [1]
    finally:
        await asyncio.wait_for(pubsub.aclose(), 5)  # type: ignore[no-untyped-call]
        await client.aclose()
        await publisher.aclose()


@pytest.mark.both_loops
async def test_a_node_reads_its_subscription_pushed(
    servers: Servers, connect: Clients, prefix: str
) -> None:
    """With hiredis, a node's subscription is taken over (a silent fallback to the slower
    readers would keep every other test green)."""
    from imchat.server.redis_fanout import RedisFanout

    try:
        server = await servers.start(redis_url=REDIS_URL, redis_prefix=prefix)
        fanout = server.fanout
        assert isinstance(fanout, RedisFanout)
        alice, bob = await connect("alice"), await connect("bob")
        await join(alice, "lobby")
        await join(bob, "lobby")
        ok = await alice.request("say", room="lobby", text="pushed")
        event = await next_event(bob, "msg", skip=frozenset({"online", "joined"}))
        assert (event["seq"], event["text"]) == (ok["seq"], "pushed")
        assert isinstance(fanout._pushed, PushedSubscription)
    finally:
        await servers.close()
        delete_keys(prefix)


@pytest.mark.parametrize("readers", ["redis-py", "raw"])
async def test_a_node_without_the_raw_readers_delivers_through_redis_py(
    servers: Servers,
    connect: Clients,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    readers: str,
) -> None:
    """Without hiredis (an optional extra), or with a redis-py whose internals differ, the
    node reads its subscription and its appends' replies with redis-py's public paths
    (``raw``: a transport that cannot be taken over, read with :class:`RawSubscription`).
    CI installs hiredis, so this is where those paths are exercised."""
    import imchat.server.redis_fanout as redis_fanout
    import imchat.server.redis_store as redis_store

    fell_back: list[int] = []
    monkeypatch.setattr(redis_fanout, "push_subscription", lambda pubsub, on_data: None)
    if readers == "raw":
        raw_reads: list[int] = []
        real_read_raw = redis_fanout.RedisFanout._read_raw

        async def counted_read_raw(self: Any, raw: Any) -> None:
            raw_reads.append(1)
            await real_read_raw(self, raw)

        monkeypatch.setattr(redis_fanout.RedisFanout, "_read_raw", counted_read_raw)

    async def no_raw_execute(redis: aioredis.Redis, stack: Any) -> None:
        fell_back.append(len(stack))
        return None

    async def no_raw_link(link: RawLink, stack: Any) -> None:
        fell_back.append(len(stack))
        return None

    if readers == "redis-py":
        monkeypatch.setattr(redis_fanout, "raw_subscription", lambda pubsub: None)
    monkeypatch.setattr(redis_store, "raw_execute", no_raw_execute)
    monkeypatch.setattr(RawLink, "execute", no_raw_link)
    try:
        await servers.start(redis_url=REDIS_URL, redis_prefix=prefix)
        alice, bob = await connect("alice"), await connect("bob")
        await join(alice, "lobby")
        await join(bob, "lobby")
        ok = await alice.request("say", room="lobby", text="through redis-py")
        event = await next_event(bob, "msg", skip=frozenset({"online", "joined"}))
        assert (event["seq"], event["text"]) == (ok["seq"], "through redis-py")
        dm = await alice.request("dm", to="bob", text="and a dm")
        got = await next_event(bob, "dm", skip=frozenset({"online", "joined", "msg"}))
        assert (got["seq"], got["text"]) == (dm["seq"], "and a dm")
        assert fell_back  # the appends asked for the raw path and took redis-py's
        if readers == "raw":
            assert raw_reads, "the subscription was not read with RawSubscription"
    finally:
        await servers.close()
        delete_keys(prefix)


class CountingInbox(deque[list[bytes]]):
    """A node's inbox that counts the envelopes queued in it."""

    queued = 0

    def append(self, item: list[bytes]) -> None:
        self.queued += 1
        super().append(item)


async def test_envelopes_from_another_node_go_out_without_the_inbox(
    servers: Servers, connect: Clients, prefix: str
) -> None:
    """A node delivers the envelopes of a chunk as it parses them while nothing is held
    (another node's says carry that node's holds, not this one's); a membership op in
    between queues it and what follows, which still reach the member in channel order."""
    from imchat.server.redis_fanout import RedisFanout

    try:
        first = await servers.start(redis_url=REDIS_URL, redis_prefix=prefix)
        second = await servers.start(redis_url=REDIS_URL, redis_prefix=prefix)
        alice = await connect("alice", port=first.port)
        carol = await connect("carol", port=first.port)
        bob = await connect("bob", port=second.port)
        await join(alice, "lobby")
        await join(bob, "lobby")
        fanout = second.fanout
        assert isinstance(fanout, RedisFanout)
        await fanout.caught_up()
        inbox = CountingInbox()
        fanout._inbox = inbox
        says = [alice.request("say", room="lobby", text=f"m{i}") for i in range(20)]
        oks = await asyncio.gather(*says)
        got = [await next_event(bob, "msg", skip=frozenset({"online"})) for _ in oks]
        assert [e["text"] for e in got] == [f"m{i}" for i in range(20)]
        assert inbox.queued == 0, "an envelope from another node went through the inbox"
        # An op (carol joins) between says: it goes through the inbox, in channel order.
        await alice.request("say", room="lobby", text="before")
        await carol.request("join", room="lobby")
        await alice.request("say", room="lobby", text="after")
        seen = [await next_event(bob, skip=frozenset({"online"})) for _ in range(3)]
        assert [(e["type"], e.get("text") or e.get("nick")) for e in seen] == [
            ("msg", "before"),
            ("joined", "carol"),
            ("msg", "after"),
        ]
        assert inbox.queued >= 1
    finally:
        await servers.close()
        delete_keys(prefix)
