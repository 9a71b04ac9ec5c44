"""What a user's arrival, messages and leave cost on SQLite does not grow with the users.

Every statement the writer runs for a guest's claim, its DMs, read markers and leave must
find its rows through an index. One that scans a table of users makes a crowd's departure
quadratic: 10,000 guests leaving at once (a network blip) held the writer, and so every
other user's ``ok``, for 8 s of SQLite scans (``benchmarks/README.md``, round 14).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imchat.protocol.events import DmEvent, MsgEvent
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import Draft, resume_hash
from imchat.server.streams import StreamId

#: Statements about the transaction itself: nothing to plan.
NOT_PLANNED = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    yield store
    await store.close()


def trace(store: SQLiteStore) -> list[str]:
    """Every statement the writer's connection runs from now on, values filled in."""
    seen: list[str] = []
    assert store._writer is not None
    store._writer._conn.set_trace_callback(seen.append)
    return seen


def scans(path: Path, statements: list[str]) -> list[tuple[str, str]]:
    """(statement, plan step) for every step that reads a whole table."""
    conn = sqlite3.connect(path)
    try:
        found = []
        for sql in statements:
            if sql.lstrip().upper().startswith(NOT_PLANNED):
                continue
            for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"):
                detail = row[-1]
                if detail.startswith("SCAN ") and detail != "SCAN CONSTANT ROW":
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
