"""What a user's arrival, messages and leave cost on SQLite does not grow with the users.

Every statement the store runs (writer and reader) for a guest's claim, its messages, DMs,
read markers and leave must find its rows through an index. One that scans a table of users
makes a crowd's departure quadratic: 10,000 guests leaving at once (a network blip) held the
writer, and so every other user's ``ok``, for 8-11 s of SQLite scans (``benchmarks/README.md``,
"A crowd leaving at once").
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_BACKEND_URL, TIMEOUT, Clients, join

from imchat.protocol.events import DmEvent, MsgEvent
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import Draft, resume_hash
from imchat.server.streams import StreamId

#: Statements about the transaction itself: nothing to plan.
NOT_PLANNED = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")
#: Plan steps that read no table of ours whole.
WHOLE_BY_DESIGN = ("SCAN CONSTANT ROW", "SCAN search_index VIRTUAL TABLE")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    yield store
    await store.close()


def trace(store: SQLiteStore) -> list[str]:
    """Every statement the store's connections (writer and reader) run from now on, values
    filled in."""
    seen: list[str] = []
    assert store._writer is not None and store._reader is not None
    store._writer._conn.set_trace_callback(seen.append)
    store._reader.set_trace_callback(seen.append)
    return seen


def scans(path: Path, statements: list[str]) -> list[tuple[str, str]]:
    """(statement, plan step) for every step that reads a whole table."""
    conn = sqlite3.connect(path)
    try:
        found = []
        for sql in statements:
            # "-- ...": a virtual table's own statements (the search index's, by rowid).
            if sql.startswith("--") or sql.lstrip().upper().startswith(NOT_PLANNED):
                continue
            for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"):
                detail = row[-1]
                # The search index is a virtual table: its MATCH is its own lookup.
                if detail.startswith("SCAN ") and not detail.startswith(WHOLE_BY_DESIGN):
                    found.append((sql, detail))
        return found
    finally:
        conn.close()


def dm(sender: str, ident: str, recipient: str, recipient_ident: str) -> Draft:
    return Draft(
        StreamId.dm(sender, recipient),
        sender,
        None,
        DmEvent(from_=sender, to=recipient, text="hi"),
        recipient_ident,
        owner=ident,
        dm_idents=(ident, recipient_ident),
        recipient_ident=recipient_ident,
        max_queued=9,
    )


async def test_a_guests_visit_and_leave_read_no_table_whole(store: SQLiteStore) -> None:
    # Enough users that the tables are not trivially small.
    for i in range(50):
        await store.claim_guest(f"crowd{i}", None, resume_hash(f"r{i}"), 60.0)
    statements = trace(store)
    alice = (await store.claim_guest("alice", None, resume_hash("ra"), 60.0)).identity
    bob = (await store.claim_guest("bob", None, resume_hash("rb"), 60.0)).identity
    assert alice is not None and bob is not None
    await store.append(dm("alice", alice.ident, "bob", bob.ident))
    lobby = StreamId.room("lobby")
    await store.create_room("lobby")
    said = await store.append(
        Draft(lobby, "alice", "c1", MsgEvent(room="lobby", from_="alice", text="hi"))
    )
    await store.mark(alice.ident, lobby, said.seq)
    await store.guest_left(alice.ident, 60.0)
    resumed = await store.claim_guest("alice", resume_hash("ra"), resume_hash("ra2"), 60.0)
    assert resumed.identity == alice
    await store.guest_left(alice.ident, 0.0)  # its hold is over: its identity ends
    await store.guest_left(bob.ident, 0.0)  # ... and so does alice's, at this leave
    await store.claim_guest("alice", None, resume_hash("ra3"), 60.0)  # a new identity
    assert any("held_until" in sql for sql in statements)  # the leaves were traced
    assert scans(store.path, statements) == []


@pytest.mark.skipif(REDIS_BACKEND_URL is not None, reason="SQLite's plans")
async def test_a_rooms_conversation_reads_no_table_whole(server: Any, connect: Clients) -> None:
    """Messages, replies, reactions, edits, deletes, markers, history, search and DMs, as a
    user sends them, and the leave."""
    statements = trace(server.store)
    alice, bob = await connect("alice"), await connect("bob")
    for conn in (alice, bob):
        await join(conn, "lobby")
    said = await alice.request("say", room="lobby", text="hello there")
    answer = await bob.request("say", room="lobby", text="hi", reply_to=said["seq"])
    await bob.request("react", room="lobby", seq=said["seq"], emoji="+1")
    await alice.request("edit", room="lobby", seq=said["seq"], text="hello")
    await bob.request("delete", room="lobby", seq=answer["seq"])
    await bob.request("mark", room="lobby", seq=said["seq"])
    await bob.request("markers")
    await bob.request("history", room="lobby")
    await bob.request("search", text="hello")
    await alice.request("dm", to="bob", text="psst")
    await bob.request("history", **{"with": "alice"})
    await alice.close()
    while (await bob.next_event(TIMEOUT)).get("type") != "offline":
        pass  # until alice's leave is done
    assert any("held_until" in sql for sql in statements)  # ... and was traced
    assert scans(server.store.path, statements) == []
