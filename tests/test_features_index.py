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
