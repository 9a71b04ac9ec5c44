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
