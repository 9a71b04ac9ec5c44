"""RedisStore.start_append: appends queued at the call, in call order, against the real Redis.

The say path starts each message's append without a task (``start_append``): its script
joins the ordered pipeline at once and its reply becomes the ``Stored`` where the batch's
results are handed out. A message whose target rules are checked in the same script (a
reply, an edit, a reaction: ``Draft.feature``) must keep its place among the plain ones
started after it, or a pipelined run's seqs would not follow its requests.
"""

from __future__ import annotations

import pytest

from imchat.protocol import ErrorCode, ProtocolError
from imchat.protocol.events import MsgEvent
from imchat.server.message_features import REPLY, Feature
from imchat.server.redis_store import RedisStore
from imchat.server.store import Draft
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
