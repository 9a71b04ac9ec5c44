"""The SQLite writer inserts a batch's messages together (``_Writer.rows``, one statement
per chunk of :func:`imchat.server.sqlite_rows.insert_rows`), and anything that reads the
``messages`` table in the same transaction still sees every message before it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from imchat.protocol.events import MsgEvent
from imchat.server.message_features import REPLY, Feature
from imchat.server.sqlite_rows import MAX_ROWS, insert_rows
from imchat.server.sqlite_store import SQLiteStore
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
