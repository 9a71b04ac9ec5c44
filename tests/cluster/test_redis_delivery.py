"""A node's delivery of an envelope to its sessions (RedisFanout._deliver), white-box.

A node looks each recipient list up once and keeps the users it found; a user who arrives or
leaves afterwards must not be missed or kept. Races make that hard to hit through a cluster,
so this drives the node's own connect and delivery, against the real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imchat.server.peer import User
from imchat.server.redis_fanout import RedisFanout
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
