"""The SQLite store's search backlog: a plain message's search row is written after its
``ok``, in a later transaction of the writer; whatever reads or changes the index first
writes what waits, and a killed server's waiting rows are indexed at the next open.

Every test holds the backlog back (``IMCHAT_INDEX_FLUSH_SECONDS``: no idle or age flush) and
checks in the database file that the rows do wait, so each one exercises the backlog."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import RawClient, subprocess_env

from imchat.protocol.events import MsgEvent
from imchat.server import features_sqlite
from imchat.server.message_features import Feature, SearchScope
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import Draft
from imchat.server.streams import StreamId

pytestmark = pytest.mark.timeout(60)

LOBBY = StreamId.room("lobby")
OTHER = StreamId.room("other")
HOLD = "3600"


@pytest.fixture(autouse=True)
def hold_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMCHAT_INDEX_FLUSH_SECONDS", HOLD)


def _say(text: str, stream: StreamId = LOBBY, **fields: object) -> Draft:
    event = MsgEvent(room=stream.room_name or "", from_="alice", text=text, **fields)  # type: ignore[arg-type]
    feature = None
    if "kind" in fields:
        feature = Feature(str(fields["kind"]), int(str(fields["target"])), "alice")
    return Draft(stream, "alice", None, event, feature=feature)


def _indexed(path: Path) -> list[tuple[str, int]]:
    """What the index holds, read from the file as another process would."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT stream, seq FROM search_index ORDER BY stream, seq")
        return [(stream, int(seq)) for stream, seq in rows]


def _pending(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT stream, seq FROM search_pending ORDER BY stream"))


async def _texts(store: SQLiteStore, words: str, *streams: StreamId) -> list[str]:
    found = await store.search(SearchScope(streams or (LOBBY,)), words, before=None, limit=50)
    return sorted(p.decode().split('"text":"')[1].split('"')[0] for p in found.messages)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = SQLiteStore(tmp_path / "imchat.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_a_search_sees_every_message_acknowledged_before_it(store: SQLiteStore) -> None:
    for i in range(5):
        await store.append(_say(f"needle {i}"))
    await store.append(_say("needle elsewhere", OTHER))
    assert _indexed(store.path) == []  # acknowledged, committed, rows waiting
    assert _pending(store.path) == [("r:lobby", 0), ("r:other", 0)]
    assert await _texts(store, "needle") == [f"needle {i}" for i in range(5)]
    assert await _texts(store, "elsewhere", OTHER) == ["needle elsewhere"]
    assert _pending(store.path) == []  # written, and nothing left to recover


async def test_an_edit_of_a_waiting_message_replaces_its_row(store: SQLiteStore) -> None:
    await store.append(_say("old wording"))
    assert _indexed(store.path) == []
    await store.append(_say("new wording", kind="edit", target=1))
    assert await _texts(store, "old") == []
    assert await _texts(store, "new") == ["new wording"]


async def test_a_delete_of_a_waiting_message_removes_its_row(store: SQLiteStore) -> None:
    await store.append(_say("soon gone"))
    await store.append(_say("stays here"))
    assert _indexed(store.path) == []
    await store.append(_say("", kind="delete", target=1))
    assert await _texts(store, "gone") == []
    assert await _texts(store, "stays") == ["stays here"]
    assert _indexed(store.path) == [("r:lobby", 2)]


async def test_a_prune_leaves_no_row_of_a_pruned_waiting_message(store: SQLiteStore) -> None:
    for i in range(4):
        await store.append(_say(f"word {i}"))
    assert _indexed(store.path) == []
    assert await store.prune(before_ts=None, keep=1) == 3
    assert _indexed(store.path) == [("r:lobby", 4)]
    assert await _texts(store, "word") == ["word 3"]


async def _hold_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keep the writer busy in a batch of its own until the event is set, so what is
    submitted meanwhile runs in the next batch, together."""
    writer = store._writer
    assert writer is not None
    started, release = threading.Event(), threading.Event()

    def hold(c: sqlite3.Connection) -> bool:
        started.set()
        return release.wait(10)

    held = writer.submit(hold)
    assert await asyncio.to_thread(started.wait, 10)
    return release, held


def _fail(c: sqlite3.Connection) -> None:
    raise sqlite3.OperationalError("disk trouble")


async def test_a_rolled_back_batch_leaves_no_row_behind(store: SQLiteStore) -> None:
    """A message of a failed batch was never stored: its row must not be written later (its
    seq goes to the next message, whose search would then find the lost text)."""
    release, held = await _hold_writer(store)
    lost = store.start_append(_say("ghost text"))
    assert store._writer is not None
    failing = store._writer.submit(_fail)
    release.set()
    assert await held
    with pytest.raises(sqlite3.OperationalError):
        await lost
    with pytest.raises(sqlite3.OperationalError):
        await failing
    assert (await store.append(_say("real text"))).seq == 1
    assert await _texts(store, "ghost") == []
    assert await _texts(store, "real") == ["real text"]


async def test_rows_a_rolled_back_flush_wrote_wait_again(store: SQLiteStore) -> None:
    """An edit flushes the backlog inside its batch; if that batch fails, the rows it wrote
    are rolled back with it and must be written again later."""
    await store.append(_say("alpha words"))
    await store.append(_say("beta words"))
    release, held = await _hold_writer(store)
    edit = store.start_append(_say("beta changed", kind="edit", target=2))
    assert store._writer is not None
    failing = store._writer.submit(_fail)
    release.set()
    assert await held
    with pytest.raises(sqlite3.OperationalError):
        await edit
    with pytest.raises(sqlite3.OperationalError):
        await failing
    assert _indexed(store.path) == []
    assert _pending(store.path) == [("r:lobby", 0)]  # rolled back with the rows
    assert await _texts(store, "words") == ["alpha words", "beta words"]


async def test_close_writes_what_waits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    await store.append(_say("kept at close"))
    assert _indexed(store.path) == []
    await store.close()
    assert _indexed(store.path) == [("r:lobby", 1)]
    assert _pending(store.path) == []


async def test_open_indexes_what_a_killed_writer_left_waiting(tmp_path: Path) -> None:
    """In process: the rows are dropped as if the process had died (the backlog emptied by
    hand, then the writer stopped with nothing to write), and the next open finds them
    through ``search_pending``. Its seq is a lower bound: from a lower one (as a downgrade
    can leave), messages indexed, edited or deleted already are not indexed again."""
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    await store.append(_say("zero words"))
    await store.flush_search_index()
    await store.append(_say("first words"))
    await store.append(_say("first edited", kind="edit", target=2))  # flushes
    await store.append(_say("gone words"))
    await store.append(_say("", kind="delete", target=4))  # flushes
    await store.append(_say("second words"))
    await store.append(_say("third words"))
    await store.append(_say("other words", OTHER))
    assert _indexed(path) == [("r:lobby", 1), ("r:lobby", 3)]  # 3: the edit's version of 2
    assert _pending(path) == [("r:lobby", 5), ("r:other", 0)]
    assert store._writer is not None
    store._writer.backlog.rows.clear()  # what SIGKILL does to the rows in memory
    await store.close()
    assert _indexed(path) == [("r:lobby", 1), ("r:lobby", 3)]

    tool = SQLiteStore(path, catch_up_index=False)  # `imchat user` beside a server: no catch-up
    await tool.open()
    await tool.close()
    assert _pending(path) == [("r:lobby", 5), ("r:other", 0)]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE search_pending SET seq = 0")

    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.index_build_seconds is None  # no rebuild, only the waiting rows
        assert _pending(path) == []
        assert _indexed(path) == [
            ("r:lobby", 1),
            ("r:lobby", 3),
            ("r:lobby", 6),
            ("r:lobby", 7),
            ("r:other", 1),
        ]
        assert await _texts(store, "words", LOBBY, OTHER) == [
            "other words",
            "second words",
            "third words",
            "zero words",
        ]
        assert await _texts(store, "first") == ["first edited"]
    finally:
        await store.close()


async def test_a_version_1_index_is_complete_and_kept(tmp_path: Path) -> None:
    """A database indexed before the backlog (version "1") is not rebuilt; a search_pending
    row it holds (left from before a downgrade, whose rebuild made it stale) is dropped."""
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    await store.append(_say("older words"))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'search_index'")
        conn.execute("INSERT INTO search_pending VALUES ('r:lobby', 0)")
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.index_build_seconds is None
        assert _pending(path) == []
        assert _indexed(path) == [("r:lobby", 1)]  # not indexed twice
        with sqlite3.connect(path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'search_index'")
            assert version.fetchone() == (features_sqlite.INDEX_VERSION,)
    finally:
        await store.close()


async def test_search_finds_a_message_after_the_server_was_killed_with_its_row_waiting(
    server_process: Any, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    env = subprocess_env(IMCHAT_INDEX_FLUSH_SECONDS=HOLD)
    proc = server_process(data, "--rate", "0", env=env)
    raw = await RawClient.open(proc.port)
    await raw.hello("alice")
    assert (await raw.request({"type": "join", "room": "lobby", "id": "j"}))["type"] == "ok"
    reply = await raw.request({"type": "say", "room": "lobby", "text": "needle", "id": "s"})
    assert reply["type"] == "ok"
    db = data / "imchat.db"
    assert _indexed(db) == []  # committed before the ok; its row waits
    assert _pending(db) == [("r:lobby", 0)]
    proc.kill(signal.SIGKILL)
    assert await asyncio.to_thread(proc.wait) == -signal.SIGKILL
    await raw.close()

    proc = server_process(data, "--rate", "0", env=env)
    raw = await RawClient.open(proc.port)
    try:
        await raw.hello("bob")
        await raw.request({"type": "join", "room": "lobby", "id": "j"})
        found = await raw.request({"type": "search", "room": "lobby", "text": "needle", "id": "q"})
        assert found["type"] == "ok"
        assert [m["text"] for m in found["messages"]] == ["needle"]
        assert _indexed(db) == [("r:lobby", 1)]  # once: indexed at open, not again
    finally:
        await raw.close()


async def test_a_failed_flush_keeps_its_rows_waiting(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append(_say("kept words"))
    real = features_sqlite._index_all
    monkeypatch.setattr(features_sqlite, "_index_all", lambda conn, rows: _fail(conn))
    with pytest.raises(sqlite3.OperationalError):
        await store.flush_search_index()
    monkeypatch.setattr(features_sqlite, "_index_all", real)
    assert _indexed(store.path) == []
    assert _pending(store.path) == [("r:lobby", 0)]
    assert await _texts(store, "kept") == ["kept words"]
