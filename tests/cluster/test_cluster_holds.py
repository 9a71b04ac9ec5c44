"""RedisFanout's delivery order, in-process and without Redis: holds, membership ops, fan-out.

Envelopes are fed as if they came from the channel; nothing here connects anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest

from imchat.protocol import ProtocolError, encode_frame
from imchat.server.peer import User
from imchat.server.redis_fanout import RedisFanout
from imchat.server.redis_store import RedisStore


class FakeSession:
    def __init__(self, user: User) -> None:
        self.user = user
        self.closing = False
        self.frames: list[bytes] = []
        self.failed: list[str] = []
        user.sessions.append(self)  # type: ignore[arg-type]

    def send(self, frame: bytes) -> None:
        if not self.closing:
            self.frames.append(frame)

    def fail(self, error: ProtocolError) -> None:
        self.failed.append(error.code.value)
        self.closing = True


@pytest.fixture
async def fanout() -> Any:
    # Constructing clients opens no connection: the URL is never dialled here.
    store = RedisStore("redis://127.0.0.1:1/0", prefix="unit:")
    fanout = RedisFanout(store)
    fanout.node_id = "n1"
    yield fanout
    await fanout._pubsub_client.aclose()
    await store.redis.aclose()


def local_user(fanout: RedisFanout, nick: str, ident: str = "") -> FakeSession:
    user = fanout._users[nick.lower()] = User(nick, False, ident)
    return FakeSession(user)


def feed(fanout: RedisFanout, hold: str, op: str, recipients: str, payload: bytes) -> None:
    envelope = f"{hold}\n{op}\n{recipients}\n".encode() + payload
    fanout._inbox.append(envelope.split(b"\n", 3))
    fanout._drain()


async def test_held_envelope_and_everything_after_it_wait_for_release(
    fanout: RedisFanout,
) -> None:
    alice = local_user(fanout, "alice")
    bob = local_user(fanout, "bob")
    hold = fanout.hold(alice)  # type: ignore[arg-type]
    assert hold is not None and fanout.hold(alice) == hold  # type: ignore[arg-type]
    feed(fanout, "", "", "alice bob", b'{"n":0}')  # published before: goes at once
    feed(fanout, hold, "", "alice bob", b'{"n":1}')
    feed(fanout, "", "", "bob", b'{"n":2}')  # published after: waits behind it
    assert alice.frames == bob.frames[:1] == [encode_frame(b'{"n":0}')]
    assert len(bob.frames) == 1
    fanout.release(alice)  # type: ignore[arg-type]
    assert alice.frames == [encode_frame(b'{"n":0}'), encode_frame(b'{"n":1}')]
    assert bob.frames == [encode_frame(p) for p in (b'{"n":0}', b'{"n":1}', b'{"n":2}')]
    # Released before its envelope arrived: it goes straight through.
    hold2 = fanout.hold(alice)  # type: ignore[arg-type]
    fanout.release(alice)  # type: ignore[arg-type]
    feed(fanout, hold2 or "", "", "alice", b'{"n":3}')
    assert alice.frames[-1] == encode_frame(b'{"n":3}')


async def test_other_nodes_holds_do_not_block(fanout: RedisFanout) -> None:
    alice = local_user(fanout, "alice")
    feed(fanout, "n2.7", "", "*", b'{"n":1}')
    assert alice.frames == [encode_frame(b'{"n":1}')]


async def test_membership_ops_apply_to_local_users_only(fanout: RedisFanout) -> None:
    alice = local_user(fanout, "alice")
    feed(fanout, "", "+lobby alice", "alice", b'{"type":"joined"}')
    feed(fanout, "", "+lobby carol", "alice carol", b'{"type":"joined"}')
    assert fanout.is_member(alice.user, "lobby")
    assert fanout.user("carol") is None
    feed(fanout, "", "-lobby alice", "alice", b'{"type":"parted"}')
    assert not fanout.is_member(alice.user, "lobby")
    # A marker (no payload) delivers nothing; a repeated key is delivered once.
    feed(fanout, "", "", "", b"")
    feed(fanout, "", "", "alice alice", b'{"n":9}')
    assert alice.frames[-1] == encode_frame(b'{"n":9}')
    assert alice.frames.count(encode_frame(b'{"n":9}')) == 1


async def test_an_account_taking_the_nick_ends_the_other_identity_here(
    fanout: RedisFanout,
) -> None:
    """``!key ident`` (the connect script's, when an account outranks the guest identity
    online under its nick): that identity's sessions on this node end with ``nick_taken``
    at once, and later envelopes naming the key do not reach them."""
    carol = local_user(fanout, "carol", ident="gcarol")
    dave = local_user(fanout, "dave", ident="gdave")
    feed(fanout, "", "!dave gdave", "", b"")  # its own identity: nothing ends
    assert dave.failed == [] and fanout.user("dave") is dave.user
    feed(fanout, "", "!carol acarol", "", b"")
    assert carol.failed == ["nick_taken"]
    assert fanout.user("carol") is None
    feed(fanout, "", "", "carol dave", b'{"n":1}')
    assert carol.frames == [] and dave.frames == [encode_frame(b'{"n":1}')]


class BatchingSession(FakeSession):
    """A session with ``send_frames``, as :class:`imchat.server.session.Session` has:
    records each append (one list of frames per call)."""

    def __init__(self, user: User) -> None:
        super().__init__(user)
        self.appends: list[list[bytes]] = []

    def send(self, frame: bytes) -> None:
        super().send(frame)
        self.appends.append([frame])

    def send_frames(self, frames: list[bytes], joined: bytes) -> None:
        assert joined == b"".join(frames)
        self.frames.extend(frames)
        self.appends.append(list(frames))


def batching_user(fanout: RedisFanout, nick: str) -> BatchingSession:
    user = fanout._users[nick.lower()] = User(nick, False)
    return BatchingSession(user)


def read(fanout: RedisFanout, *envelopes: tuple[str, str, str, bytes]) -> None:
    """Envelopes as one socket read brings them: all in the inbox, then one drain."""
    for hold, op, recipients, payload in envelopes:
        envelope = f"{hold}\n{op}\n{recipients}\n".encode() + payload
        fanout._inbox.append(envelope.split(b"\n", 3))
    fanout._drain()


def frames(*payloads: bytes) -> list[bytes]:
    return [encode_frame(p) for p in payloads]


async def test_a_run_to_one_recipient_list_is_one_append_per_session(
    fanout: RedisFanout,
) -> None:
    alice, bob = batching_user(fanout, "alice"), batching_user(fanout, "bob")
    plain = local_user(fanout, "carol")  # no send_frames: frame by frame
    sent = [b'{"n":%d}' % i for i in range(5)]
    read(fanout, *[("", "", "alice bob carol", p) for p in sent])
    assert alice.appends == bob.appends == [frames(*sent)]
    assert plain.frames == frames(*sent)


async def test_runs_end_at_another_list_an_op_and_a_hold_in_channel_order(
    fanout: RedisFanout,
) -> None:
    """Every session gets its frames in channel order across run boundaries: another
    recipient list, a membership op (applied between the frames around it) and a hold."""
    alice, bob = batching_user(fanout, "alice"), batching_user(fanout, "bob")
    hold = fanout.hold(bob)  # type: ignore[arg-type]
    read(
        fanout,
        ("", "", "alice bob", b"1"),
        ("", "", "alice bob", b"2"),
        ("", "", "bob", b"3"),
        ("", "", "alice bob", b"4"),
        ("", "+lobby alice", "alice bob", b"5"),
        ("", "", "alice bob", b"6"),
        (hold, "", "alice bob", b"7"),
        ("", "", "alice bob", b"8"),
    )
    assert alice.appends == [frames(b"1", b"2"), frames(b"4"), frames(b"5", b"6")]
    assert bob.appends == [frames(b"1", b"2"), frames(b"3"), frames(b"4"), frames(b"5", b"6")]
    assert fanout.is_member(alice.user, "lobby")  # type: ignore[arg-type]
    fanout.release(bob)  # type: ignore[arg-type]
    assert alice.frames == frames(b"1", b"2", b"4", b"5", b"6", b"7", b"8")
    assert bob.frames == frames(b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8")
    assert alice.appends[-1] == bob.appends[-1] == frames(b"7", b"8")


async def test_an_account_taking_the_nick_ends_the_run_before_it(fanout: RedisFanout) -> None:
    """``!key ident`` evicts the identity here: what was read before it reaches that session
    first (evicted afterwards), nothing after it does."""
    alice = batching_user(fanout, "alice")
    bob = batching_user(fanout, "bob")
    read(
        fanout,
        ("", "", "alice bob", b"1"),
        ("", "", "alice bob", b"2"),
        ("", "!alice a-other", "", b""),
        ("", "", "alice bob", b"3"),
    )
    assert alice.appends == [frames(b"1", b"2")]
    assert bob.frames == frames(b"1", b"2", b"3")


class SessionsOnly:
    """The registry's part ``RedisFanout._lost`` uses: every session of the server."""

    def __init__(self, *sessions: FakeSession) -> None:
        self.sessions = list(sessions)


async def test_learning_it_was_reaped_ends_the_sessions_in_the_same_step(
    fanout: RedisFanout,
) -> None:
    """A node frozen past the node timeout reads ``reaped <itself>`` when it resumes, maybe
    in the same wake-up as requests its clients sent meanwhile: their sessions must end then
    (``shutting_down``), before any such request can be answered from the state Redis has
    without them (``not_in_room`` for a say to a room they were in)."""
    alice, bob = local_user(fanout, "alice"), local_user(fanout, "bob")
    fanout._registry = SessionsOnly(alice, bob)  # type: ignore[assignment]
    fanout.available = True
    read(
        fanout,
        ("", "", "alice bob", b"1"),
        ("", "reaped n2", "", b""),  # another node's: nothing to do here
        ("", "", "alice bob", b"2"),
        ("", "reaped n1", "", b""),
        ("", "-lobby alice", "alice bob", b"3"),
    )
    assert alice.failed == bob.failed == ["shutting_down"]
    assert alice.frames == bob.frames == frames(b"1", b"2")
    assert not fanout.available and fanout.user("alice") is None
