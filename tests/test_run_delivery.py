"""A run of pipelined messages: each reply in request order, a room's consecutive events
delivered together (one append per recipient), every event after its own reply, and the
events of different rooms and of DMs in request order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec

from imchat.protocol import DEFAULT_MAX_FRAME, ProtocolError, encode_frame, encode_message
from imchat.protocol.errors import ErrorCode
from imchat.protocol.events import ErrorReply, Ok
from imchat.server.appends import Append, Run, finish_run
from imchat.server.context import Context
from imchat.server.fanout import LocalFanout
from imchat.server.session import Session
from imchat.server.stats import STATS


class Log:
    """What left, in order: replies to the sender and deliveries by the fan-out."""

    def __init__(self) -> None:
        self.out: list[tuple[Any, ...]] = []

    def sender(self) -> Any:
        return SimpleNamespace(
            send=self.reply,
            send_error=lambda e: self.out.append(("error", e.code)),
            peer="p",
        )

    def reply(self, frame: bytes) -> None:
        """A reply finish_run made (a room message's ``ok``), by its id."""
        reply = msgspec.json.decode(frame[4:])
        assert reply["type"] == "ok" and reply["seq"] == reply["id"], reply
        self.out.append(("ok", reply["id"]))

    def fanout(self, *, batches: bool = True) -> Any:
        fanout = SimpleNamespace(
            to_room=lambda room, frame: self.out.append(("room", room, [payload(frame)])),
            release=lambda session: self.out.append(("release",)),
        )
        if batches:
            fanout.to_room_frames = lambda room, frames: self.out.append(
                ("room", room, [payload(frame) for frame in frames])
            )
        return fanout


def payload(frame: bytes) -> bytes:
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[4:]


def stored(seq: int) -> Any:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(
        SimpleNamespace(
            seq=seq, ts=1.5, payload=f"m{seq}".encode(), duplicate=False, published=False
        )
    )
    return future


def say(log: Log, room: str, seq: int) -> Append:
    """A room message: finish_run makes its reply and its event's frame."""
    return Append(SimpleNamespace(id=seq), stored(seq), None, room)  # type: ignore[arg-type]


def dm(log: Log, seq: int) -> Append:
    def finish(s: Any) -> None:
        log.out.append(("ok", seq))
        log.out.append(("dm", seq))

    return Append(SimpleNamespace(id=seq), stored(seq), finish)  # type: ignore[arg-type]


async def test_a_rooms_consecutive_events_leave_together_after_their_replies() -> None:
    log = Log()
    run: Run = [say(log, "a", 1), say(log, "a", 2), say(log, "a", 3)]
    await finish_run(log.sender(), run, log.fanout())
    assert log.out == [
        ("ok", 1),
        ("ok", 2),
        ("ok", 3),
        ("room", "a", [b"m1", b"m2", b"m3"]),
        ("release",),
    ]
    assert run == []


async def test_other_rooms_dms_and_errors_keep_request_order() -> None:
    log = Log()
    error = ProtocolError(ErrorCode.NOT_IN_ROOM, "no")
    run: Run = [
        say(log, "a", 1),
        error,
        say(log, "a", 2),
        say(log, "b", 3),
        dm(log, 4),
        say(log, "a", 5),
    ]
    await finish_run(log.sender(), run, log.fanout())
    assert log.out == [
        ("ok", 1),
        ("error", "not_in_room"),  # a reply: it may come before earlier events
        ("ok", 2),
        ("ok", 3),
        ("room", "a", [b"m1", b"m2"]),
        ("room", "b", [b"m3"]),  # before the DM's events
        ("ok", 4),
        ("dm", 4),
        ("ok", 5),
        ("room", "a", [b"m5"]),
        ("release",),
    ]


async def test_a_fanout_without_batches_gets_each_frame() -> None:
    """A clustered fan-out (no ``to_room_frames``) is handed the frames one by one."""
    log = Log()
    run: Run = [say(log, "a", 1), say(log, "a", 2)]
    await finish_run(log.sender(), run, log.fanout(batches=False))
    assert log.out == [
        ("ok", 1),
        ("ok", 2),
        ("room", "a", [b"m1"]),
        ("room", "a", [b"m2"]),
        ("release",),
    ]


class Native(Session):
    pass


class Translating(Session):
    """Like the IRC adapter: a subclass that writes each frame its own way."""

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)  # type: ignore[attr-defined]


def fake_session(cls: type[Session]) -> Any:
    loop = SimpleNamespace(time=lambda: 0.0, call_soon=lambda f: None)
    registry = SimpleNamespace(mark_dirty=lambda s: None, dirty=[])
    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=DEFAULT_MAX_FRAME, max_buffer=1 << 20),
        loop=loop,
        registry=registry,
        mark_dirty=lambda s: None,
    )
    session = cls(hub)  # type: ignore[arg-type]
    session.transport = SimpleNamespace(get_write_buffer_size=lambda: 0)  # type: ignore[assignment]
    session.sent = []  # type: ignore[attr-defined]
    return session


async def test_to_room_frames_appends_once_per_native_session_and_each_frame_elsewhere() -> None:
    fanout = LocalFanout()
    native, translating = fake_session(Native), fake_session(Translating)
    bare = SimpleNamespace(user=None, sent=[])
    bare.send = bare.sent.append  # a transport without send_frames (the WebSocket adapter)
    for i, session in enumerate((native, translating, bare)):
        await fanout.connect(session, f"u{i}", admin=False, ident=f"g.{i}")
        await fanout.join(session, "a")
    frames = [encode_message({"type": "msg", "seq": i}) for i in range(3)]
    before = STATS.deliveries
    fanout.to_room_frames("a", frames)
    assert native._out == b"".join(frames)  # one append: the joined bytes, no list
    assert native.queued == sum(map(len, frames))
    assert translating.sent == frames
    assert bare.sent == frames
    # The flush counts the entry as one; the other two were counted when it was queued.
    assert STATS.deliveries - before == 2


async def test_a_failing_finish_is_answered_internal_and_the_run_goes_on() -> None:
    """A finish that raises (a bug) costs its own request an ``internal`` reply: the replies
    and events of the rest of the run still go out, each once."""
    log = Log()

    def failing(s: Any) -> None:
        raise RuntimeError("boom")

    broken = Append(SimpleNamespace(id=2), stored(2), failing)  # type: ignore[arg-type]
    run: Run = [say(log, "a", 1), broken, say(log, "a", 3)]
    await finish_run(log.sender(), run, log.fanout())
    assert log.out == [
        ("ok", 1),
        ("room", "a", [b"m1"]),
        ("error", ErrorCode.INTERNAL),
        ("ok", 3),
        ("room", "a", [b"m3"]),
        ("release",),
    ]
    assert run == []


async def test_a_runs_replies_are_one_append_and_equal_oks() -> None:
    """A native sender gets the replies of a stretch of room messages in one append (not
    one send each), before the stretch's events, each exactly the ``Ok`` the contract
    names (``MessageOk`` encodes to the same bytes); a refusal in between is queued in its
    turn."""
    sender = fake_session(Native)
    fanout = LocalFanout()
    await fanout.connect(sender, "s", admin=False, ident="g.s")
    await fanout.join(sender, "a")
    run: Run = [
        say(Log(), "a", 1),
        say(Log(), "a", 2),
        ProtocolError(ErrorCode.NOT_IN_ROOM, "no").with_id(3),
        say(Log(), "a", 4),
    ]
    await finish_run(sender, run, fanout)
    ok = [encode_message(Ok(id=i, seq=i, ts=1.5)) for i in (1, 2, 4)]
    error = encode_message(ErrorReply(code="not_in_room", message="no", id=3))
    events = [encode_frame(f"m{i}".encode()) for i in (1, 2, 4)]
    assert sender._out == [ok[0] + ok[1], error, ok[2], b"".join(events)]


async def test_a_finished_run_is_empty_so_finishing_it_again_sends_nothing() -> None:
    """The hub finishes the run before any other request and again on an unexpected error:
    a run once finished must not answer or deliver twice."""
    log = Log()
    run: Run = [say(log, "a", 1), ProtocolError(ErrorCode.BAD_TEXT, "x")]
    await finish_run(log.sender(), run, log.fanout())
    first = list(log.out)
    await finish_run(log.sender(), run, log.fanout())
    assert log.out == [*first, ("release",)]


async def test_is_member_follows_joins_parts_and_an_evicted_identity() -> None:
    """``LocalFanout.is_member`` reads the room's table (not the user's ``rooms``): it must
    agree with joins, parts, a user's last session leaving, and an identity that another
    identity's hello under the same nick ended (its old User object is no member)."""
    fanout = LocalFanout()

    def bare() -> Any:
        return SimpleNamespace(user=None, sent=[], fail=lambda e: None, close=lambda: None)

    first = bare()
    await fanout.connect(first, "Ann", admin=False, ident="g.1")
    old = first.user
    assert not fanout.is_member(old, "a")
    await fanout.join(first, "a")
    assert fanout.is_member(old, "a") and not fanout.is_member(old, "b")
    await fanout.part(first, "a")
    assert not fanout.is_member(old, "a")
    await fanout.join(first, "a")
    # Another identity takes the nick: the old user is dropped, the new one joins anew.
    second = bare()
    await fanout.connect(second, "ann", admin=False, ident="g.2")
    new = second.user
    assert new is not old
    assert not fanout.is_member(old, "a") and not fanout.is_member(new, "a")
    await fanout.join(second, "a")
    assert fanout.is_member(new, "a") and not fanout.is_member(old, "a")
    assert await fanout.disconnect(second) == ["a"]
    assert not fanout.is_member(new, "a")


def test_context_reads_the_stores_queue_and_the_fanouts_hold_once() -> None:
    """A message reads ``ctx.queue_append`` and ``ctx.holds``, set when the context is made:
    the store's ``queue_append`` (or None), and whether the fan-out's ``hold`` is its own
    (a clustered one tags messages; LocalFanout's is always None)."""

    class Holding(LocalFanout):
        def hold(self, session: Any) -> str | None:
            return "tag"

    store = SimpleNamespace(queue_append=lambda draft, owner: None)
    parts: dict[str, Any] = dict.fromkeys(
        ("config", "registry", "authn", "dms", "limits", "addr_limits", "room_budget", "buckets")
    )
    local = Context(store=store, fanout=LocalFanout(), **parts)
    assert local.queue_append == store.queue_append and not local.holds
    held = Context(store=SimpleNamespace(), fanout=Holding(), **parts)
    assert held.queue_append is None and held.holds
