"""The SQLite store's groups of room messages (``SQLiteStore.queue_append``): the messages
one session queues without waiting in between are one writer operation with one future,
settled with each message's own outcome; a group never holds two sessions' messages, and
nothing queued after a group is stored before it. The writer inserts a batch's messages
together (``_Writer.rows``, one statement per chunk of :func:`imchat.server.sqlite_rows.
insert_rows`), and anything that reads the ``messages`` table in the same transaction still
sees every message before it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from append_group_contract import check_a_sessions_appends_share_one_future
from conftest import embedded_alice

from imchat.protocol import ErrorCode, ProtocolError, encode_message
from imchat.protocol.events import MsgEvent
from imchat.server import sqlite_store
from imchat.server.message_features import REPLY, Feature
from imchat.server.sqlite_rows import MAX_ROWS, insert_rows
from imchat.server.sqlite_store import MAX_GROUP, SQLiteStore
from imchat.server.store import Draft, Stored
from imchat.server.streams import StreamId


def _say(text: str, *, cid: str | None = None, reply_to: int | None = None) -> Draft:
    event = MsgEvent(room="lobby", from_="alice", text=text, reply_to=reply_to)
    feature = None if reply_to is None else Feature(REPLY, reply_to, "alice", False)
    return Draft(StreamId.room("lobby"), "alice", cid, event, feature=feature)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    yield store
    await store.close()


async def test_a_sessions_messages_share_one_future_until_anything_else_is_queued(
    store: SQLiteStore,
) -> None:
    await check_a_sessions_appends_share_one_future(store, _say)


async def test_a_refusal_in_a_group_is_that_messages_alone(store: SQLiteStore) -> None:
    owner = object()
    group, _ = store.queue_append(_say("first"), owner)
    store.queue_append(_say("answer to nothing", reply_to=99), owner)
    store.queue_append(_say("third"), owner)
    first, refused, third = await group
    assert isinstance(first, Stored) and first.seq == 1
    assert isinstance(refused, ProtocolError) and refused.code == ErrorCode.NO_SUCH_MESSAGE
    assert isinstance(third, Stored) and third.seq == 2  # the refusal took no seq


async def test_a_group_holds_at_most_max_group_messages(store: SQLiteStore) -> None:
    owner = object()
    queued = [store.queue_append(_say(f"m{i}"), owner) for i in range(MAX_GROUP + 1)]
    assert queued[MAX_GROUP - 1][0] is queued[0][0]
    assert queued[MAX_GROUP][0] is not queued[0][0] and queued[MAX_GROUP][1] == 0
    assert [r.seq for r in await queued[MAX_GROUP][0]] == [MAX_GROUP + 1]


async def test_a_failing_group_stores_none_of_its_messages(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = sqlite_store._append

    def failing(writer: Any, draft: Draft, c: sqlite3.Connection) -> Any:
        if draft.event.text == "boom":
            raise sqlite3.OperationalError("disk trouble")
        return append(writer, draft, c)

    monkeypatch.setattr(sqlite_store, "_append", failing)
    owner = object()
    group, _ = store.queue_append(_say("before"), owner)
    store.queue_append(_say("boom"), owner)
    with pytest.raises(sqlite3.OperationalError):
        await group
    again, _ = store.queue_append(_say("after"), owner)
    assert [r.seq for r in await again] == [1]  # the failed group assigned nothing
    texts = [m for m in await store.history(StreamId.room("lobby"), after=0, before=None, limit=9)]
    assert [b'"after"' in m for m in texts] == [True]


async def test_a_burst_of_says_is_one_group_and_a_failing_one_answers_each_internal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TCP: twenty pipelined says are one writer operation; when a group fails, each
    of its says is answered ``internal`` in order and the session goes on."""
    groups: list[int] = []
    append_all = sqlite_store._append_all

    def counting(writer: Any, drafts: list[Draft], c: sqlite3.Connection) -> Any:
        groups.append(len(drafts))
        if any(d.event.text == "boom" for d in drafts):
            raise sqlite3.OperationalError("disk trouble")
        return append_all(writer, drafts, c)

    monkeypatch.setattr(sqlite_store, "_append_all", counting)
    async with embedded_alice(tmp_path) as (_, conn):
        says = [
            encode_message({"type": "say", "room": "lobby", "text": f"m{i}", "id": i})
            for i in range(20)
        ]
        conn.send_raw(b"".join(says))
        replies = []
        while len(replies) < 20:
            frame = await conn.next_event(10)
            if frame["type"] == "ok":
                replies.append(frame["seq"])
        assert replies == list(range(1, 21))
        assert groups == [20]
        boom = [
            encode_message({"type": "say", "room": "lobby", "text": text, "id": text})
            for text in ("x", "boom", "y")
        ]
        conn.send_raw(b"".join(boom))
        errors = []
        while len(errors) < 3:
            frame = await conn.next_event(10)
            if frame["type"] == "error":
                errors.append((frame["id"], frame["code"]))
        assert errors == [("x", "internal"), ("boom", "internal"), ("y", "internal")]
        ok = await conn.request("say", room="lobby", text="still here")
        assert ok["seq"] == 21


# -- a batch's messages inserted together (``_Writer.rows``, :mod:`imchat.server.sqlite_rows`)


def _trace_inserts(store: SQLiteStore) -> list[str]:
    """Every statement the writer's connection runs that inserts into ``messages``."""
    seen: list[str] = []
    writer = store._writer
    assert writer is not None
    writer._conn.set_trace_callback(
        lambda sql: seen.append(sql) if "INTO messages" in sql else None
    )
    return seen


async def test_a_group_of_27_messages_is_inserted_by_four_statements(store: SQLiteStore) -> None:
    inserts = _trace_inserts(store)
    owner = object()
    futures = [store.queue_append(_say(f"m{i}"), owner) for i in range(27)]
    group = futures[0][0]
    assert all(f is group for f, _ in futures)
    assert [r.seq for r in await group] == list(range(1, 28))
    assert len(inserts) == 4  # 16 + 8 + 2 + 1 rows, not 27 statements
    stored = await store.history(StreamId.room("lobby"), after=0, before=None, limit=50)
    assert [b'"m%d"' % i in event for i, event in enumerate(stored)] == [True] * 27


async def test_a_cid_repeated_within_one_group_is_the_first_message(store: SQLiteStore) -> None:
    owner = object()
    group, _ = store.queue_append(_say("first", cid="c1"), owner)
    store.queue_append(_say("plain"), owner)
    store.queue_append(_say("first again", cid="c1"), owner)
    first, plain, again = await group
    assert isinstance(first, Stored) and isinstance(plain, Stored)
    assert isinstance(again, Stored) and again.duplicate
    assert (again.seq, again.payload) == (first.seq, first.payload)
    assert plain.seq == first.seq + 1


async def test_a_reply_within_one_group_finds_its_target(store: SQLiteStore) -> None:
    owner = object()
    group, _ = store.queue_append(_say("question"), owner)
    store.queue_append(_say("answer", reply_to=1), owner)
    question, answer = await group
    assert isinstance(question, Stored) and isinstance(answer, Stored)
    assert (question.seq, answer.seq) == (1, 2)


async def test_separate_appends_in_one_batch_read_each_others_messages(
    store: SQLiteStore,
) -> None:
    """``start_append`` operations queued together run in one transaction: the reply's
    check reads the table, so the question before it must be inserted by then."""
    question = store.start_append(_say("question"))
    answer = store.start_append(_say("answer", reply_to=1))
    assert ((await question).seq, (await answer).seq) == (1, 2)


async def test_an_operation_after_appends_in_one_batch_sees_them(store: SQLiteStore) -> None:
    """A prune queued behind five messages runs in their transaction (the writer is held
    until all are queued) and must count them: it keeps the last two."""
    release = threading.Event()
    holding = threading.Event()

    def hold(c: sqlite3.Connection) -> None:
        holding.set()
        release.wait(10)

    held = store._submit(hold)
    await asyncio.to_thread(holding.wait, 10)
    appends = [store.start_append(_say(f"m{i}")) for i in range(5)]
    pruned = asyncio.ensure_future(store.prune(before_ts=None, keep=2))
    await asyncio.sleep(0)  # the prune's operation is queued behind the appends
    release.set()
    await held
    assert [(await a).seq for a in appends] == [1, 2, 3, 4, 5]
    assert await pruned == 3
    stored = await store.history(StreamId.room("lobby"), after=0, before=None, limit=9)
    assert len(stored) == 2 and b'"m3"' in stored[0] and b'"m4"' in stored[1]


@pytest.mark.parametrize("count", [0, 1, 2, 3, MAX_ROWS - 1, MAX_ROWS, MAX_ROWS + 1, 200])
def test_insert_rows_inserts_every_row_in_order(count: int) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, text TEXT)")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    rows = [(n, f"row {n}") for n in range(count)]
    insert_rows(conn.cursor(), "INSERT INTO t (n, text) VALUES ", rows)
    assert conn.execute("SELECT n, text FROM t ORDER BY rowid").fetchall() == rows
    full, rest = divmod(count, MAX_ROWS)
    assert len([s for s in statements if s.startswith("INSERT")]) == full + rest.bit_count()
