"""The registry's flush (``session.flush_all``) and the room recipients it writes to, in-process.

A broadcast's per-recipient work is a send (queue) and a flush (write): both were made
cheaper, and these pin what they must still do: the output bound is enforced during a flush
the moment its writes pass it, a client that does not keep up is cut instead of written to,
and a room's recipients follow its members and their sessions.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from imchat.protocol import DEFAULT_MAX_FRAME, encode_message
from imchat.server.fanout import LocalFanout
from imchat.server.registry import MEMORY_PER_BYTE_OWED, Registry
from imchat.server.session import Session, flush_all
from imchat.server.stats import STATS


class Transport:
    """Keeps what it is given, as a client that reads nothing would leave it."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str) -> Any:
        return None


class Translating(Session):
    """Like the IRC adapter: a subclass with a send of its own."""

    def __init__(self, hub: Any) -> None:
        super().__init__(hub)
        self.translated: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.translated.append(frame)


def sessions(
    registry: Registry, count: int, max_buffer: int = 1 << 20, cls: type[Session] = Session
) -> list[Session]:
    loop = asyncio.get_running_loop()
    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=DEFAULT_MAX_FRAME, max_buffer=max_buffer),
        loop=loop,
        registry=registry,
    )
    made = []
    for _ in range(count):
        session = cls(hub)  # type: ignore[arg-type]
        session.transport = Transport()  # type: ignore[assignment]
        registry.sessions.add(session)
        made.append(session)
    return made


def writes(session: Session) -> list[bytes]:
    return session.transport.writes  # type: ignore[union-attr]


async def test_a_flush_enforces_the_output_bound_as_soon_as_its_writes_pass_it() -> None:
    registry = Registry(asyncio.get_running_loop(), max_output_total=1000)
    registry.flush_dirty = flush_all
    big, small = sessions(registry, 2)
    frame = encode_message({"type": "msg", "text": "x" * 600})
    # 600-odd bytes owed count 1,200-odd against a bound of 1,000: over it (not by bytes).
    assert len(frame) < 1000 < len(frame) * MEMORY_PER_BYTE_OWED
    big.send(frame)
    small.send(b"tiny")
    flush_all(registry.dirty)
    assert registry.output_cuts == 1  # counted at once, the largest ower cut
    assert big.closing and not small.closing
    assert writes(small) == [b"tiny"]


async def test_a_client_that_does_not_keep_up_is_cut_at_the_flush_not_written_to() -> None:
    registry = Registry(asyncio.get_running_loop())
    registry.flush_dirty = flush_all
    slow, fine = sessions(registry, 2, max_buffer=100)
    slow.transport.buffered = 101  # type: ignore[union-attr]
    before = STATS.slow_consumers
    for session in (slow, fine):
        session.send(b"first")
        session.send(b"second")
    flush_all(registry.dirty)
    assert STATS.slow_consumers == before + 1
    assert slow.closing and slow.transport.is_closing()  # type: ignore[union-attr]
    (last,) = writes(slow)  # its frames stay in history: only the error is written
    assert b'"slow_consumer"' in last
    assert writes(fine) == [b"firstsecond"]  # a turn's frames in one write


async def test_a_rooms_recipients_follow_its_members_and_their_sessions() -> None:
    fanout = LocalFanout()

    def peer() -> Any:
        session = SimpleNamespace(user=None, sent=[])
        session.send = session.sent.append
        return session

    first, second, other = peer(), peer(), peer()
    await fanout.connect(first, "ann", admin=False, ident="g.ann")
    await fanout.join(first, "a")
    fanout.to_room("a", b"1")
    await fanout.connect(second, "ann", admin=False, ident="g.ann")  # her second session
    fanout.to_room("a", b"2")
    await fanout.connect(other, "bob", admin=False, ident="g.bob")
    await fanout.join(other, "a")
    fanout.to_room_frames("a", [b"3", b"4"])
    await fanout.disconnect(first)
    fanout.to_room("a", b"5")
    await fanout.part(other, "a")
    fanout.to_room("a", b"6")
    assert first.sent == [b"1", b"2", b"3", b"4"]
    assert second.sent == [b"2", b"3", b"4", b"5", b"6"]
    assert other.sent == [b"3", b"4", b"5"]


def mixed(registry: Registry) -> tuple[Session, Session, Session, Session]:
    """Two native sessions, a closing one and a :class:`Translating` one."""
    first, closing, last = sessions(registry, 3)
    (translating,) = sessions(registry, 1, cls=Translating)
    closing.closing = True
    return first, closing, last, translating


async def members_of_a(fanout: LocalFanout, *members: Session) -> None:
    """Each of ``members`` a user of its own in room ``a``, in this order."""
    for i, session in enumerate(members):
        await fanout.connect(session, f"u{i}", admin=False, ident=f"g.{i}")
        await fanout.join(session, "a")


async def test_a_rooms_event_is_queued_for_native_sessions_and_sent_through_a_subclass() -> None:
    registry = Registry(asyncio.get_running_loop())
    fanout = LocalFanout()
    first, closing, last, translating = mixed(registry)
    await members_of_a(fanout, first, translating, closing, last)  # runs of each class
    frame = encode_message({"type": "msg", "seq": 1})
    fanout.to_room("a", frame)
    assert translating.translated == [frame]  # type: ignore[attr-defined]
    assert translating.queued == 0  # its own send, not the native queue
    assert closing.queued == 0  # a closing session is sent nothing
    assert registry.dirty == [first, last]
    fanout.to_room("a", b"more")
    assert registry.dirty == [first, last]  # marked once a turn
    flush_all(registry.dirty)
    assert writes(first) == writes(last) == [frame + b"more"]


async def test_a_rooms_run_of_events_counts_one_delivery_per_frame_and_recipient() -> None:
    registry = Registry(asyncio.get_running_loop())
    fanout = LocalFanout()
    first, closing, last, translating = mixed(registry)
    await members_of_a(fanout, first, closing, translating, last)
    frames = [encode_message({"type": "msg", "seq": seq}) for seq in (1, 2, 3)]
    before = STATS.deliveries
    fanout.to_room_frames("a", frames)
    assert translating.translated == frames  # type: ignore[attr-defined]
    assert closing.queued == 0
    flush_all(registry.dirty)
    assert writes(first) == writes(last) == [b"".join(frames)]
    assert STATS.deliveries - before == 2 * len(frames)  # the closing one got none
