"""The SQLite search index: built once from a database that predates it (a migration)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imchat.protocol.events import MsgEvent
from imchat.server.message_features import Feature, SearchScope
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import Draft
from imchat.server.streams import StreamId

LOBBY = StreamId.room("lobby")


def _say(text: str, sender: str = "alice", **fields: object) -> Draft:
    event = MsgEvent(room="lobby", from_=sender, text=text, **fields)  # type: ignore[arg-type]
    feature = None
    if "kind" in fields:
        feature = Feature(str(fields["kind"]), int(str(fields["target"])), sender)
    return Draft(LOBBY, sender, None, event, feature=feature)


async def test_index_is_built_from_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    await store.append(_say("kept as it was"))
    await store.append(_say("old wording"))
    await store.append(_say("new wording", kind="edit", target=2))
    await store.append(_say("gone soon"))
    await store.append(_say("", kind="delete", target=4))
    await store.close()
    # What a database from before revision 3 looks like: no index, no marker of one.
    with sqlite3.connect(path) as conn:
        for table in ("search_index", "search_rows", "msg_deleted", "reactions"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DELETE FROM meta WHERE key = 'search_index'")
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.index_build_seconds is not None
        scope = SearchScope((LOBBY,))
        found = await store.search(scope, "wording", before=None, limit=10)
        assert [p.decode().count('"kind":"edit"') for p in found.messages] == [1]
        assert (await store.search(scope, "gone", before=None, limit=10)).messages == []
        assert len((await store.search(scope, "kept", before=None, limit=10)).messages) == 1
        # the rebuilt state also knows what was deleted
        with pytest.raises(Exception, match="no_such_message"):
            await store.append(_say("x", kind="edit", target=4))
    finally:
        await store.close()
    reopened = SQLiteStore(path)
    await reopened.open()
    assert reopened.index_build_seconds is None  # built once
    await reopened.close()


async def test_messages_of_one_millisecond_and_tie_slot_are_each_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rooms' first messages in the same millisecond want the same index row: the second
    takes the next free one (and an edit's new version, too), and every one is found."""
    monkeypatch.setattr("imchat.server.sqlite_store.time.time", lambda: 1_700_000_000.0)
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    rooms = [StreamId.room(name) for name in ("a", "b", "c")]
    try:
        for stream in rooms:
            event = MsgEvent(room=stream.room_name or "", from_="alice", text=f"word {stream.key}")
            assert (await store.append(Draft(stream, "alice", None, event))).seq == 1
        edit = MsgEvent(room="b", from_="alice", text="changed", kind="edit", target=1)
        feature = Feature("edit", 1, "alice")
        await store.append(Draft(rooms[1], "alice", None, edit, feature=feature))
        found = await store.search(SearchScope(tuple(rooms)), "word", before=None, limit=10)
        assert sorted(p.decode().count("word r:") for p in found.messages) == [1, 1]
        changed = await store.search(SearchScope((rooms[1],)), "changed", before=None, limit=10)
        assert len(changed.messages) == 1
    finally:
        await store.close()


async def test_edits_and_deletes_find_home_rows_and_moved_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain message in its home row has no ``search_rows`` entry; one that collided, and
    an edit's new version, have one. Deleting or editing either kind removes exactly its own
    row (a home row a delete freed can go to another room's message)."""
    monkeypatch.setattr("imchat.server.sqlite_store.time.time", lambda: 1_700_000_000.0)
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    a, b, c = (StreamId.room(name) for name in ("a", "b", "c"))

    def draft(stream: StreamId, text: str, **fields: object) -> Draft:
        event = MsgEvent(room=stream.room_name or "", from_="alice", text=text, **fields)  # type: ignore[arg-type]
        feature = None
        if "kind" in fields:
            feature = Feature(str(fields["kind"]), int(str(fields["target"])), "alice")
        return Draft(stream, "alice", None, event, feature=feature)

    async def texts(*words: str) -> list[str]:
        found = await store.search(SearchScope((a, b, c)), " ".join(words), before=None, limit=10)
        return sorted(p.decode().split('"text":"')[1].split('"')[0] for p in found.messages)

    try:
        await store.append(draft(a, "word one"))  # home row
        await store.append(draft(b, "word two"))  # collides: moved, in search_rows
        await store.flush_search_index()  # the rows wait in the writer's backlog until then
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT stream FROM search_rows").fetchall() == [("r:b",)]
        await store.append(draft(a, "", kind="delete", target=1))  # frees a's home row
        await store.append(draft(c, "word three"))  # takes that free home row
        assert await texts("word") == ["word three", "word two"]
        await store.append(draft(b, "", kind="delete", target=1))
        assert await texts("word") == ["word three"]
        await store.append(draft(c, "fresh words", kind="edit", target=1))
        assert await texts("word") == []
        assert await texts("fresh") == ["fresh words"]
        await store.append(draft(c, "", kind="delete", target=1))
        assert await texts("fresh") == []
    finally:
        await store.close()


async def test_a_database_with_every_row_in_search_rows_still_edits(tmp_path: Path) -> None:
    """Databases written before home rows named every message in ``search_rows``."""
    path = tmp_path / "imchat.db"
    store = SQLiteStore(path)
    await store.open()
    await store.append(_say("first text"))
    await store.append(_say("second text"))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO search_rows SELECT stream, seq, rowid FROM search_index")
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.append(_say("first edited", kind="edit", target=1))
        await store.append(_say("", kind="delete", target=2))
        found = await store.search(SearchScope((LOBBY,)), "text", before=None, limit=10)
        assert found.messages == []
        found = await store.search(SearchScope((LOBBY,)), "edited", before=None, limit=10)
        assert len(found.messages) == 1
    finally:
        await store.close()
