"""A node's delivery to its sessions (RedisFanout._deliver, kept DMs at a hello), white-box.

A node looks each recipient list up once and keeps the sessions it found; a user or a
session that arrives or leaves afterwards must not be missed or kept; and a long DM queue,
read page by page after the welcome, must go out before what was published after the hello.
Races make these hard to hit through a cluster, so this drives the node's own connect and
delivery, against the real Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from imchat.protocol import encode_frame
from imchat.server.peer import User
from imchat.server.redis_fanout import PENDING_PAGE, RedisFanout
from imchat.server.redis_store import RedisStore

from .cluster_support import REDIS_URL, delete_keys


class FakeSession:
    """What delivery and connect use of a session: its user and what it was sent."""

    def __init__(self) -> None:
        self.user: User | None = None
        self.closing = False
        self.guest_hold: float | None = None
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def wait_written(self) -> asyncio.Future[bool]:
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        written.set_result(True)
        return written


@pytest.fixture
async def fanout(prefix: str) -> AsyncIterator[RedisFanout]:
    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.open()
    fanout = RedisFanout(store)
    fanout.node_id = "n0"
    await store.redis.sadd(store.keys.nodes, "n0")
    try:
        yield fanout
    finally:
        await fanout._pubsub_client.aclose()
        await store.close()
        delete_keys(prefix)


async def test_a_user_who_arrives_after_a_list_was_looked_up_is_found(
    fanout: RedisFanout,
) -> None:
    alice, bob = FakeSession(), FakeSession()
    await fanout._connect_session(alice, "alice", admin=False, ident="galice")  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"one")  # bob is not on this node yet
    await fanout._connect_session(bob, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"two")
    assert alice.frames == [b"one", b"two"]
    assert bob.frames == [b"two"]


async def test_a_user_who_left_and_came_back_is_found_anew(fanout: RedisFanout) -> None:
    alice, bob = FakeSession(), FakeSession()
    await fanout._connect_session(alice, "alice", admin=False, ident="galice")  # type: ignore[arg-type]
    await fanout._connect_session(bob, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"one")
    await fanout._disconnect_session(bob)  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"two")  # read after bob left here
    again = FakeSession()
    await fanout._connect_session(again, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"three")
    assert alice.frames == [b"one", b"two", b"three"]
    assert bob.frames == [b"one"]
    assert again.frames == [b"three"]


class FakeRegistry:
    """The registry's part the fanout uses for kept DMs: background tasks."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        while not all(task.done() for task in self.tasks):
            await asyncio.gather(*self.tasks)


async def test_a_second_session_of_a_user_already_looked_up_is_sent_to(
    fanout: RedisFanout,
) -> None:
    # The node keeps each list's sessions, not only its users: a session arriving or
    # leaving for a user already found must be seen too.
    alice, bob = FakeSession(), FakeSession()
    await fanout._connect_session(alice, "alice", admin=False, ident="galice")  # type: ignore[arg-type]
    await fanout._connect_session(bob, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"one")
    second = FakeSession()
    await fanout._connect_session(second, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    fanout._deliver_run(b"alice bob ", [b"two", b"three"])
    await fanout._disconnect_session(bob)  # type: ignore[arg-type]
    fanout._deliver(b"alice bob ", b"four")
    fanout._deliver_run(b"*", [b"five", b"six"])
    run, more = [encode_frame(b"two"), encode_frame(b"three")], [encode_frame(b"five")]
    more.append(encode_frame(b"six"))
    assert alice.frames == [b"one", *run, b"four", *more]
    assert bob.frames == [b"one", *run]
    assert second.frames == [*run, b"four", *more]


async def test_a_long_queue_goes_out_before_what_was_published_after_the_hello(
    fanout: RedisFanout,
) -> None:
    """The node reads the queue's later pages after the welcome; an envelope published after
    the hello (a live DM) must wait for the last of them, however fast it comes."""
    registry = FakeRegistry()
    fanout._registry = registry  # type: ignore[assignment]
    redis, keys = fanout.redis, fanout.keys
    queued = [f'{{"type":"dm","seq":{i}}}'.encode() for i in range(1, 2 * PENDING_PAGE + 51)]
    await redis.rpush(keys.pending("gbob"), *queued)
    bob = FakeSession()
    await fanout._connect_session(bob, "bob", admin=False, ident="gbob")  # type: ignore[arg-type]
    hold = fanout._holds[bob]  # type: ignore[index]
    # What the connect script published (its own envelope, with the hold), then a live DM.
    fanout._inbox.append([hold.encode(), b"", b"bob ", b'{"type":"online"}'])
    fanout._inbox.append([b"", b"", b"bob ", b'{"type":"dm","seq":251}'])
    fanout.release(bob)  # type: ignore[arg-type]
    fanout._drain()  # as the subscription would, before the pages are read
    await registry.settle()
    sent = [frame[4:] for frame in bob.frames]
    assert sent == [*queued, b'{"type":"online"}', b'{"type":"dm","seq":251}']
    assert await redis.llen(keys.pending("gbob")) == 0, "written, so dropped"
