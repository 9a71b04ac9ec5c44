"""RedisStore.start_append: appends queued at the call, in call order, against the real Redis.

The say path starts each message's append without a task (``start_append``): its script
joins the ordered pipeline at once and its reply becomes the ``Stored`` where the batch's
results are handed out. A message whose target rules are checked in the same script (a
reply, an edit, a reaction: ``Draft.feature``) must keep its place among the plain ones
started after it, or a pipelined run's seqs would not follow its requests. A session's run of
room messages (``queue_append``) shares one future, settled with each message's own outcome.
"""

from __future__ import annotations

import uuid

import pytest
from append_group_contract import check_a_sessions_appends_share_one_future

from imchat.protocol import ErrorCode, ProtocolError
from imchat.protocol.events import MsgEvent
from imchat.server import features_redis, redis_store
from imchat.server.message_features import REPLY, Feature
from imchat.server.redis_store import RedisStore
from imchat.server.store import Draft, Stored
from imchat.server.streams import StreamId

LOBBY = StreamId.room("lobby")


def say(text: str, *, reply_to: int | None = None) -> Draft:
    event = MsgEvent(room="lobby", from_="alice", text=text, reply_to=reply_to)
    feature = Feature(REPLY, reply_to, "alice") if reply_to is not None else None
    # Posted as a detached sender: no membership needed, so no presence scripts either.
    return Draft(LOBBY, "alice", None, event, feature=feature, as_member=False)


async def test_appends_started_together_are_stored_in_call_order(store: RedisStore) -> None:
    first = await store.append(say("first"))
    assert first.seq == 1
    started = [
        store.start_append(say("plain")),
        store.start_append(say("a reply", reply_to=1)),
        store.start_append(say("after the reply")),
        store.start_append(say("a reply to nothing", reply_to=99)),
        store.start_append(say("last")),
    ]
    assert (await started[0]).seq == 2
    assert (await started[1]).seq == 3
    assert (await started[2]).seq == 4
    with pytest.raises(ProtocolError) as refused:
        await started[3]
    assert refused.value.code is ErrorCode.NO_SUCH_MESSAGE
    last = await started[4]
    assert last.seq == 5 and last.published and not last.duplicate
    assert b'"text":"last"' in last.payload and b'"seq":5' in last.payload


async def test_a_refusal_settles_its_own_future_alone(store: RedisStore) -> None:
    """The append script's refusal (not a member) is raised by that append's future; the
    batch's other appends are stored."""
    member_only = Draft(LOBBY, "bob", None, MsgEvent(room="lobby", from_="bob", text="no"))
    refused = store.start_append(member_only)
    stored = store.start_append(say("yes"))
    with pytest.raises(ProtocolError) as caught:
        await refused
    assert caught.value.code is ErrorCode.NOT_IN_ROOM
    assert (await stored).seq == 1


def member_say(text: str, sender: str = "alice") -> Draft:
    """A room message from a sender who must be a member (the script refuses others)."""
    return Draft(LOBBY, sender, None, MsgEvent(room="lobby", from_=sender, text=text))


async def test_a_sessions_appends_share_one_future_until_anything_else_is_queued(
    store: RedisStore,
) -> None:
    alice, a3 = await check_a_sessions_appends_share_one_future(store, say)
    a4, _ = store.queue_append(say("a4"), alice)  # after a3's batch was taken: a new group
    assert a4 is not a3 and [r.seq for r in await a4] == [6]


async def test_a_refusal_in_a_group_is_that_messages_alone(store: RedisStore) -> None:
    owner = object()
    group, _ = store.queue_append(say("first"), owner)
    store.queue_append(member_say("not a member", sender="bob"), owner)
    store.queue_append(say("third"), owner)
    first, refused, third = await group
    assert isinstance(first, Stored) and first.seq == 1
    assert isinstance(refused, ProtocolError) and refused.code is ErrorCode.NOT_IN_ROOM
    assert isinstance(third, Stored) and third.seq == 2  # the refusal took no seq


async def test_a_feature_keeps_its_own_future_and_its_place(store: RedisStore) -> None:
    owner = object()
    first, i = store.queue_append(say("first"), owner)
    reply, j = store.queue_append(say("a reply", reply_to=1), owner)
    after, k = store.queue_append(say("after the reply"), owner)
    assert (i, j, k) == (0, -1, 0) and reply is not first and after is not first
    assert [r.seq for r in await first] == [1]
    assert (await reply).seq == 2
    assert [r.seq for r in await after] == [3]


async def test_a_group_split_over_batches_settles_with_every_outcome(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "MAX_BATCH", 2)
    owner = object()
    queued = [store.queue_append(say(f"m{i}"), owner) for i in range(5)]
    group = queued[0][0]
    assert all(future is group for future, _ in queued)
    assert [index for _, index in queued] == [0, 1, 2, 3, 4]
    assert [r.seq for r in await group] == [1, 2, 3, 4, 5]


async def test_a_cancelled_group_leaves_the_next_sessions_settled(store: RedisStore) -> None:
    alice, bob = object(), object()
    gone, _ = store.queue_append(say("alice's"), alice)
    kept, _ = store.queue_append(say("bob's"), bob)
    gone.cancel()  # alice's task was cancelled while it waited
    assert [r.seq for r in await kept] == [2]  # alice's message was stored all the same
    assert (await store.last_seq(LOBBY)) == 2


async def test_a_reply_keeps_its_place_when_redis_lost_its_scripts(store: RedisStore) -> None:
    """NOSCRIPT (Redis restarted and flushed its scripts): the batch loads every script it
    may run, the append's and the feature script's, and runs again what did not run, in call
    order. Loading only the append's left the reply to be queued again behind the plain
    appends started after it. Scripts of their own (a comment added), so no other test's
    Redis loses its scripts."""
    mark = f"\n-- {uuid.uuid4().hex}\n"
    append_lua = redis_store.APPEND_LUA + mark
    store._append = store.redis.register_script(append_lua)
    store.feature_lua = store.redis.register_script(features_redis.feature_script(append_lua))
    assert await store.redis.script_exists(store._append.sha, store.feature_lua.sha) == [
        False,
        False,
    ]
    started = [
        store.start_append(say("plain")),
        store.start_append(say("a reply", reply_to=1)),
        store.start_append(say("after the reply")),
    ]
    assert [(await future).seq for future in started] == [1, 2, 3]
    assert await store.redis.script_exists(store._append.sha, store.feature_lua.sha) == [
        True,
        True,
    ]
