"""Queued and live DMs to the sessions of one identity, each once and in order
(:class:`imchat.server.dm_delivery.DmDelivery`, on the in-process fan-out, with a store and
sessions the tests drive: the races below cannot be timed over sockets)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from imchat.server.dm_delivery import DmDelivery
from imchat.server.fanout import LocalFanout
from imchat.server.peer import Peer, User
from imchat.server.registry import Registry
from imchat.server.store import Store
from imchat.server.streams import StreamId

STREAM = StreamId.dm("alice", "bob")


class FakeSession:
    """Records its frames; what it was sent is written when the test says so."""

    def __init__(self) -> None:
        self.user: User | None = None
        self.closing = False
        self.frames: list[bytes] = []
        self.changed = asyncio.Event()
        #: One per wait for what was sent to be written, resolved by the test.
        self.writes: list[asyncio.Future[bool]] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.changed.set()

    def wait_written(self) -> asyncio.Future[bool]:
        self.writes.append(asyncio.get_running_loop().create_future())
        self.changed.set()
        return self.writes[-1]

    def write(self) -> None:
        """What it was sent reached the client."""
        self.writes[-1].set_result(True)

    async def until(self, frames: int) -> None:
        """Until it was sent ``frames`` and waits for them to be written."""
        while len(self.frames) < frames or len(self.writes) < 1 or self.writes[-1].done():
            self.changed.clear()
            await self.changed.wait()

    def texts(self) -> list[str]:
        return [frame[4:].decode() for frame in self.frames]


class FakeQueue:
    """The store's DM queue for one identity; a peek may be held open after it has read."""

    def __init__(self) -> None:
        self.items: list[tuple[StreamId, int, bytes]] = []
        self.peeked = asyncio.Event()
        self.hold_peek: asyncio.Future[None] | None = None

    def add(self, seq: int) -> None:
        self.items.append((STREAM, seq, f"m{seq}".encode()))

    async def peek_pending(self, recipient: str, limit: int) -> list[tuple[StreamId, int, bytes]]:
        batch = self.items[:limit]
        self.peeked.set()
        if self.hold_peek is not None:
            await self.hold_peek
        return batch

    async def drop_pending(self, recipient: str, items: list[tuple[StreamId, int]]) -> None:
        self.items = [i for i in self.items if (i[0], i[1]) not in items]

    async def claim_pending(self, recipient: str, stream: StreamId, seq: int) -> bool:
        before = len(self.items)
        self.items = [i for i in self.items if (i[0], i[1]) != (stream, seq)]
        return len(self.items) < before

    async def set_pending(self, recipient: str, stream: StreamId, seq: int) -> None:
        raise AssertionError("bob never went offline")


async def bob_with(count: int) -> tuple[DmDelivery, FakeQueue, list[FakeSession]]:
    queue = FakeQueue()
    fanout = LocalFanout()
    dms = DmDelivery(cast(Store, queue), fanout, Registry(asyncio.get_running_loop()))
    sessions = [FakeSession() for _ in range(count)]
    for session in sessions:
        await fanout.connect(cast(Peer, session), "bob", admin=False, ident="bob")
    return dms, queue, sessions


def frame(seq: int) -> bytes:
    return b"\0\0\0\0" + f"m{seq}".encode()


async def reading(dms: DmDelivery, session: FakeSession, frames: int = 1) -> asyncio.Task[Any]:
    """The session's hello reads the queue; returns once it waits for the first batch to be
    written."""
    assert session.user is not None
    task = asyncio.ensure_future(dms.deliver_undelivered(session.user, cast(Peer, session)))
    await session.until(frames)
    return task


async def test_a_live_dm_goes_to_a_settled_session_at_once_and_after_the_queue_elsewhere() -> None:
    dms, queue, (first, second) = await bob_with(2)
    queue.add(1)
    read = await reading(dms, first)  # first reads the queue; second said hello earlier
    assert dms.is_live("bob")  # second is settled: a new DM is not queued
    dms.after_commit("bob", "bob", STREAM, 2, frame(2), live=True)
    assert second.texts() == ["m2"]
    assert first.texts() == ["m1"]  # held behind what it is reading
    first.write()
    await read
    assert first.texts() == ["m1", "m2"]
    assert queue.items == []


async def test_a_dm_queued_while_every_session_reads_is_not_left_behind_by_an_empty_read() -> None:
    """The read found the queue empty, the DM was committed before the loop saw that: the
    loop must read again, or the DM stays queued while bob is online."""
    dms, queue, (only,) = await bob_with(1)
    queue.add(1)
    read = await reading(dms, only)
    queue.peeked.clear()
    queue.hold_peek = asyncio.get_running_loop().create_future()
    only.write()
    await queue.peeked.wait()  # the next read has found nothing and not returned yet
    assert not dms.is_live("bob")  # bob's only session reads the queue: the DM is queued
    queue.add(2)
    dms.after_commit("bob", "bob", STREAM, 2, frame(2), live=False)
    queue.hold_peek.set_result(None)
    queue.hold_peek = None
    await only.until(2)
    only.write()
    await read
    assert only.texts() == ["m1", "m2"]
    assert queue.items == []


async def test_a_dm_claimed_for_a_settled_session_reaches_a_reading_one_once() -> None:
    """Committed as queued (every session read the queue when it was sent); by the commit one
    had settled and claims it, while the other had already read it from the queue."""
    dms, queue, (first, second) = await bob_with(2)
    queue.add(1)
    read = await reading(dms, first)
    queue.add(2)  # the commit
    first.write()
    await first.until(2)  # dropped m1, read m2 and sent it
    dms.after_commit("bob", "bob", STREAM, 2, frame(2), live=False)
    while not second.frames:  # the claim (a task of the registry's) hands it over
        second.changed.clear()
        await second.changed.wait()
    assert second.texts() == ["m2"]
    first.write()
    await read
    assert first.texts() == ["m1", "m2"]
    assert queue.items == []
