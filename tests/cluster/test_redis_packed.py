"""Appends packed by the store itself (``RedisStore._packed_append``, ``run_packed``).

A ``say``'s ``EVALSHA`` has 14 arguments, of which only the ``cid``, the event and the hold
change from message to message: the store packs the rest once and sends a batch of packed
appends without a redis-py pipeline. What it packs must be what hiredis would have packed
from the same arguments (the script reads them by position), and the batch must still be
run again after Redis lost its scripts. A silent fallback to the pipeline would keep every
other test green and lose the gain, so these also check the packed path is taken.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.utils import HIREDIS_AVAILABLE

from imchat.protocol.events import DmEvent, MsgEvent
from imchat.server.redis_raw import RawLink
from imchat.server.redis_store import APPEND_LUA, RedisStore, pack_args
from imchat.server.store import Draft
from imchat.server.streams import StreamId

pytestmark = pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="the raw link needs hiredis")

LOBBY = StreamId.room("lobby")


def say(text: str, *, cid: str | None = None, hold: str | None = None) -> Draft:
    event = MsgEvent(room="lobby", from_="alice", text=text)
    # Posted as a detached sender: no membership needed, so no presence scripts either.
    return Draft(LOBBY, "alice", cid, event, hold=hold, as_member=False, owner="id-alice")


def dm() -> Draft:
    event = DmEvent(from_="alice", to="bob", text="psst \\ \u00e9")
    return Draft(
        StreamId.dm("alice", "bob"),
        "alice",
        "c-7",
        event,
        "id-bob",
        hold="n1.4",
        owner="id-alice",
        dm_idents=("id-alice", "id-bob"),
        recipient_ident="id-bob",
        max_queued=1000,
        max_queued_per_sender=100,
        queue_source="a:127.0.0.1",
    )


def test_pack_args_packs_as_hiredis_does() -> None:
    from hiredis import pack_command

    args = ("EVALSHA", "f" * 40, 1, "k", b"\r\n\x00", "", "\u00e9t\u00e9")
    assert pack_args(args) == pack_command(args)


async def test_a_packed_append_is_what_hiredis_packs_from_its_arguments(
    store: RedisStore,
) -> None:
    """Packed twice, so the kept parts (the head by stream, the tail by sender) are used,
    and for a message with everything set (a DM with a cid, a hold and queue limits)."""
    from hiredis import pack_command

    sha = store._append.sha
    anchor = store.keys.anchor
    for draft in (say("one"), say("two", cid="c1", hold="n1.1"), dm(), dm(), say("one")):
        expected = pack_command(("EVALSHA", sha, 1, anchor, *store._append_args(draft)))
        assert store._packed_append(draft) == expected


async def test_appends_go_to_redis_packed(store: RedisStore, monkeypatch: Any) -> None:
    """A batch of appends is sent packed (``execute_packed``), never through a redis-py
    pipeline (``RawLink.execute``), and each is stored."""
    packed: list[int] = []
    piped: list[int] = []
    real_packed, real_piped = RawLink.execute_packed, RawLink.execute

    async def count_packed(link: RawLink, batch: list[bytes]) -> Any:
        packed.append(len(batch))
        return await real_packed(link, batch)

    async def count_piped(link: RawLink, stack: Any) -> Any:
        piped.append(len(stack))
        return await real_piped(link, stack)

    monkeypatch.setattr(RawLink, "execute_packed", count_packed)
    monkeypatch.setattr(RawLink, "execute", count_piped)
    started = [store.start_append(say(f"m{i}", cid=f"c{i}")) for i in range(5)]
    assert [(await future).seq for future in started] == [1, 2, 3, 4, 5]
    assert sum(packed) == 5 and not piped
    again = await store.start_append(say("m0 again", cid="c0"))
    assert again.duplicate and again.seq == 1


async def test_a_packed_batch_runs_again_once_its_script_is_loaded(store: RedisStore) -> None:
    """NOSCRIPT (Redis restarted and flushed its scripts): the appends that did not run are
    run again, in order, once the script is loaded; the others keep their results. A script
    of its own (a comment added), so no other test's Redis loses its scripts."""
    script = APPEND_LUA + f"\n-- {uuid.uuid4().hex}\n"
    store._append = store.redis.register_script(script)
    assert await store.redis.script_exists(store._append.sha) == [False]
    started = [store.start_append(say(f"m{i}")) for i in range(3)]
    assert [(await future).seq for future in started] == [1, 2, 3]
    assert await store.redis.script_exists(store._append.sha) == [True]
    history = await store.history(LOBBY, after=None, before=None, limit=10)
    assert [b'"text":"m%d"' % i in payload for i, payload in enumerate(history)] == [True] * 3
