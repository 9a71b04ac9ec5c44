"""Revision 3 on SQLite: target checks, reactions, deletes, read markers and the search index.

Everything here runs on the store's writer connection inside the transaction that stores the
message (``check`` before it is stored, ``on_append`` after), so a check and the state it
guards change together and a failed batch rolls both back. The one exception is a plain
message's search row: it waits in the writer's :class:`Backlog` and is written with many
others in a later transaction of the same writer (FTS5's work per commit, its new segment
and the merges, then counts once per backlog instead of once per batch). Everything that
reads or changes the index flushes the backlog first, on the writer: a search, an edit, a
delete, a prune. A crash loses no row: ``search_pending`` names, in the message's own
transaction, each stream whose rows wait, and the next open indexes them (``catch_up``).

The search index is an FTS5 table (tokenizer ``unicode61``: letters and digits, case folded,
diacritics kept) holding the *current* version of each plain or action message: an edit
replaces its target's row, a delete removes it. Each row also carries scope tokens (the
stream, and for a DM both users) so one query covers every readable stream, and its rowid
encodes the time (``ts`` in ms * 4096 + a tie-breaker) so "newest first" and ``before`` are
rowid order and a rowid range, which FTS5 serves without sorting.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator

import msgspec

from imchat.protocol import ErrorCode

from .message_features import (
    DELETE,
    EDIT,
    REACT,
    TARGETABLE_KINDS,
    UNREACT,
    Query,
    SearchResult,
    SearchScope,
    dm_participants,
    owner_of,
    scope_token,
)
from .store import Draft, Stored
from .streams import StreamId

log = logging.getLogger(__name__)

#: "2": rows may wait in ``search_pending`` (see Backlog). "1" (indexed in the message's
#: own transaction) needs no rebuild; a version before this one rebuilds at open when it
#: finds "2", so going back and forth never leaves a row out.
INDEX_VERSION = "2"
SYNCHRONOUS_INDEX_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS msg_deleted (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reactions (
    stream TEXT NOT NULL,
    target INTEGER NOT NULL,
    user_key TEXT NOT NULL,
    emoji TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- the react message
    PRIMARY KEY (stream, target, user_key, emoji)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_markers (
    user_key TEXT NOT NULL,          -- the hub's user key (account or guest identity)
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_key, stream)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS search_index USING fts5(
    text, scope, stream UNINDEXED, seq UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 0',
    columnsize = 0  -- no per-row token counts: nothing ranks by them (bm25), rowid orders
);
CREATE TABLE IF NOT EXISTS search_pending (  -- a stream whose newest search rows may wait
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL             -- every message of the stream up to this one is indexed
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS search_rows (  -- a current version's index row, if not its home row
    stream TEXT NOT NULL,
    target INTEGER NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (stream, target)
) WITHOUT ROWID;
"""
#: Rowids are ts in ms times this, plus a tie-breaker (probed upwards on collision).
TIE_SLOTS = 4096

_decode = msgspec.json.Decoder().decode


def migrate(conn: sqlite3.Connection) -> float | None:
    """Create the tables; build the search index from existing messages once.

    Returns the seconds the build took, or None if the index was already there.
    """
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'search_index'").fetchone()
    if row is not None and row[0] == INDEX_VERSION:
        return None
    if row is not None and row[0] == SYNCHRONOUS_INDEX_VERSION:
        # Complete: every row was written with its message. Any search_pending row is from
        # before a downgrade, whose rebuild made it stale.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM search_pending")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('search_index', ?)", (INDEX_VERSION,))
        conn.execute("COMMIT")
        return None
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("search_index", "search_rows", "msg_deleted", "reactions", "search_pending"):
            conn.execute(f"DELETE FROM {table}")  # fixed names, not data
        rows = conn.execute(
            "SELECT stream, seq, ts, sender, event FROM messages ORDER BY stream, seq"
        )
        indexed = 0
        for stream, seq, ts, sender, payload in rows:
            indexed += 1
            event = _decode(payload)
            kind, target, text = event.get("kind"), event.get("target"), event.get("text")
            apply(conn, StreamId(stream), seq, ts, sender, kind, target, text)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('search_index', ?)", (INDEX_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    took = time.perf_counter() - start
    if indexed:  # a new database has nothing to say about
        log.info("built the search index from %d existing messages in %.1f s", indexed, took)
    return took


def catch_up(conn: sqlite3.Connection) -> int:
    """Index the messages whose search rows were still waiting when the last process ended
    (killed, or its last flush failed); the number indexed. Runs at open, before the writer.

    Only a plain message can wait (an edit, a delete or a prune flushes the backlog first),
    and each stream's waiting messages are the ones after its ``search_pending`` seq."""
    pending = conn.execute("SELECT stream, seq FROM search_pending").fetchall()
    if not pending:
        return 0
    indexed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stream, after in pending:
            stream_id = StreamId(stream)
            rows = conn.execute(
                "SELECT seq, ts, event FROM messages WHERE stream = ? AND seq > ? ORDER BY seq",
                (stream, after),
            ).fetchall()
            for seq, ts, payload in rows:
                event = _decode(payload)
                text = event.get("text")
                if event.get("kind") not in TARGETABLE_KINDS or not isinstance(text, str):
                    continue
                if _settled(conn, stream, seq):
                    continue
                _index(conn, stream_id, seq, seq, ts, text)
                indexed += 1
        conn.execute("DELETE FROM search_pending")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("indexed %d messages whose search rows were waiting at the last stop", indexed)
    return indexed


def _settled(conn: sqlite3.Connection, stream: str, seq: int) -> bool:
    """True if message ``seq``'s index state was decided already (edited or deleted)."""
    return bool(
        conn.execute(
            "SELECT 1 FROM search_rows WHERE stream = ? AND target = ?"
            " UNION ALL SELECT 1 FROM msg_deleted WHERE stream = ? AND seq = ?",
            (stream, seq, stream, seq),
        ).fetchone()
    )


class Backlog:
    """Search rows of stored plain messages not yet in the index (the writer thread's own).

    ``add`` keeps a message's row, and the first time since a flush that a stream has one it
    also writes the stream's ``search_pending`` row in the message's transaction: the next
    open finds the stream's waiting messages from it if this process dies first. ``flush``
    writes every waiting row and deletes the ``search_pending`` rows in the transaction it
    runs in. The writer calls ``begin``, then ``committed`` or ``rolled_back`` around each
    transaction, so rows of a rolled-back batch are forgotten and rows flushed in a
    rolled-back transaction wait again.
    """

    __slots__ = ("_base", "_marked", "_taken", "rows", "since")

    def __init__(self) -> None:
        #: (stream, seq, ts, text) of each waiting row, in seq order per stream.
        self.rows: list[tuple[StreamId, int, float, str]] = []
        #: ``time.monotonic()`` when the oldest waiting row came.
        self.since = 0.0
        self._base = 0
        self._marked: set[str] = set()
        self._taken: list[tuple[StreamId, int, float, str]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self, conn: sqlite3.Connection, stream: StreamId, seq: int, ts: float, text: str
    ) -> None:
        key = stream.key
        if key not in self._marked:
            conn.execute("INSERT OR IGNORE INTO search_pending VALUES (?, ?)", (key, seq - 1))
            self._marked.add(key)
        if not self.rows:
            self.since = time.monotonic()
        self.rows.append((stream, seq, ts, text))

    def flush(self, conn: sqlite3.Connection) -> int:
        """Write every waiting row in ``conn``'s open transaction; the number written."""
        rows = self.rows
        if not rows and not self._marked:
            return 0
        self.rows = []
        self._taken.extend(rows)
        if rows:
            _index_all(conn, rows)
        conn.execute("DELETE FROM search_pending")
        self._marked.clear()
        return len(rows)

    def begin(self) -> None:
        self._base = len(self.rows)

    def committed(self) -> None:
        self._taken.clear()

    def rolled_back(self) -> None:
        if self._taken:
            self.rows = self._taken[: self._base]
            self._taken = []
        else:
            del self.rows[self._base :]
        # The failed transaction's search_pending rows are gone; re-inserting is harmless.
        self._marked.clear()


# -- on the writer, inside the message's transaction --------------------------------------


def check(conn: sqlite3.Connection, draft: Draft) -> Stored | None:
    """Refuse (``Stored.refused``), answer without storing (a repeated reaction), or None to
    go ahead and store."""
    feature = draft.feature
    if feature is None:
        return None
    stream = draft.stream.key
    row = conn.execute(
        "SELECT sender, event FROM messages WHERE stream = ? AND seq = ?",
        (stream, feature.target),
    ).fetchone()
    target = _decode(row[1]) if row is not None else None
    if (
        target is None
        or target.get("kind") not in TARGETABLE_KINDS
        or conn.execute(
            "SELECT 1 FROM msg_deleted WHERE stream = ? AND seq = ?", (stream, feature.target)
        ).fetchone()
    ):
        return _refuse(ErrorCode.NO_SUCH_MESSAGE)
    # The stored sender key (not the nick in "from"): a later guest with the same nick is
    # another identity and owns none of these messages.
    own = row[0] == owner_of(draft)
    if feature.kind == EDIT and not own:
        return _refuse(ErrorCode.FORBIDDEN)
    if feature.kind == DELETE and not own and not feature.admin:
        return _refuse(ErrorCode.FORBIDDEN)
    if feature.kind in (REACT, UNREACT):
        found = conn.execute(
            "SELECT r.seq, m.ts, m.event FROM reactions r JOIN messages m"
            " ON m.stream = r.stream AND m.seq = r.seq"
            " WHERE r.stream = ? AND r.target = ? AND r.user_key = ? AND r.emoji = ?",
            (stream, feature.target, owner_of(draft), feature.emoji),
        ).fetchone()
        if feature.kind == REACT and found is not None:
            return Stored(found[0], found[1], found[2], duplicate=True)
        if feature.kind == UNREACT and found is None:
            return Stored(0, round(time.time(), 3), b"", duplicate=True)
    return None


def _refuse(code: ErrorCode) -> Stored:
    return Stored(0, 0.0, b"", duplicate=True, refused=code.value)


def on_append(
    conn: sqlite3.Connection, draft: Draft, seq: int, ts: float, backlog: Backlog
) -> None:
    """Keep reactions, deletes and the search index in step with a message just stored: a
    plain message's search row waits in ``backlog``; an edit or delete flushes it first, so
    the row it replaces or removes is in the index."""
    event = draft.event
    kind, text = event.kind, event.text
    if kind in TARGETABLE_KINDS and isinstance(text, str):
        backlog.add(conn, draft.stream, seq, ts, text)
        return
    if kind in (EDIT, DELETE):
        backlog.flush(conn)
    apply(conn, draft.stream, seq, ts, owner_of(draft), kind, event.target, text)


def apply(
    conn: sqlite3.Connection,
    stream_id: StreamId,
    seq: int,
    ts: float,
    sender: str,
    kind: object,
    target: object,
    text: object,
) -> None:
    """Apply one stored message (kind, target, text as in its event) to the feature state."""
    stream = stream_id.key
    if kind in TARGETABLE_KINDS and isinstance(text, str):
        _index(conn, stream_id, seq, seq, ts, text)
    elif not isinstance(target, int):
        return
    elif kind == EDIT and isinstance(text, str):
        if conn.execute(
            "SELECT 1 FROM msg_deleted WHERE stream = ? AND seq = ?", (stream, target)
        ).fetchone():
            return
        _unindex(conn, stream, target)
        _index(conn, stream_id, target, seq, ts, text)
    elif kind == DELETE:
        _unindex(conn, stream, target)
        conn.execute("INSERT OR IGNORE INTO msg_deleted VALUES (?, ?)", (stream, target))
    elif kind == REACT and isinstance(text, str):
        conn.execute(
            "INSERT OR IGNORE INTO reactions VALUES (?, ?, ?, ?, ?)",
            (stream, target, sender, text, seq),
        )
    elif kind == UNREACT and isinstance(text, str):
        conn.execute(
            "DELETE FROM reactions WHERE stream = ? AND target = ? AND user_key = ? AND emoji = ?",
            (stream, target, sender, text),
        )


#: Scope tokens by stream key (see ``_scope``); emptied when it reaches ``SCOPES_KEPT``.
_scopes: dict[str, str] = {}
SCOPES_KEPT = 4096


def _scope(stream: StreamId) -> str:
    """The scope tokens of a stream, remembered: hashing them for every message was 4 % of
    the server's time at R = 1 (only the writer thread and the migration call this). Kept by
    the key string, whose hash Python caches (an ``lru_cache`` on the StreamId called its
    dataclass ``__hash__``: 3,600 instructions per message)."""
    key = stream.key
    scope = _scopes.get(key)
    if scope is None:
        if len(_scopes) >= SCOPES_KEPT:
            _scopes.clear()
        tokens = [scope_token("s", key)]
        tokens.extend(scope_token("u", user) for user in dm_participants(stream))
        scope = _scopes[key] = " ".join(tokens)
    return scope


def home_row(ts: float, seq: int) -> int:
    """The index row a message stored at ``ts`` as ``seq`` takes unless it collides."""
    return round(ts * 1000) * TIE_SLOTS + seq % TIE_SLOTS


def _index(
    conn: sqlite3.Connection, stream: StreamId, target: int, seq: int, ts: float, text: str
) -> None:
    """Index ``text`` as the current version (message ``seq``) of message ``target``.

    A plain message in its home row (the usual case) is found again from its own ``ts`` and
    ``seq``; only an edit's new version or a collision is written to ``search_rows`` (that
    insert cost 1.7 us per message, about a sixth of the writer's SQL).
    """
    row = home = home_row(ts, seq)
    scope = _scope(stream)
    while True:
        # Insert first and probe upwards only on a collision (rare: same ms and tie slot); a
        # probe before every insert cost 1.5 us per message. The failed statement alone is
        # rolled back, not the writer's transaction.
        try:
            conn.execute(
                "INSERT INTO search_index (rowid, text, scope, stream, seq) VALUES (?, ?, ?, ?, ?)",
                (row, text, scope, stream.key, seq),
            )
            break
        except sqlite3.IntegrityError:
            there = conn.execute(
                "SELECT stream, seq FROM search_index WHERE rowid = ?", (row,)
            ).fetchone()
            if there is None:
                raise
            if seq == target and there == (stream.key, seq):
                return  # this very message's row: indexed already (the insert is idempotent)
            row += 1
    if row != home or seq != target:
        conn.execute(
            "INSERT OR REPLACE INTO search_rows VALUES (?, ?, ?)", (stream.key, target, row)
        )


def _index_all(conn: sqlite3.Connection, rows: list[tuple[StreamId, int, float, str]]) -> None:
    """Index plain messages (stream, seq, ts, text), each in its home row, with one
    ``executemany``; if a home row is taken (rare: same millisecond and tie slot, or a row
    there already), roll that back and index them one at a time, probing as ``_index`` does."""
    params = [
        (home_row(ts, seq), text, _scope(stream), stream.key, seq) for stream, seq, ts, text in rows
    ]
    conn.execute("SAVEPOINT index_all")
    try:
        conn.executemany(
            "INSERT INTO search_index (rowid, text, scope, stream, seq) VALUES (?, ?, ?, ?, ?)",
            params,
        )
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO index_all")
        conn.execute("RELEASE index_all")
        for stream, seq, ts, text in rows:
            _index(conn, stream, seq, seq, ts, text)
        return
    conn.execute("RELEASE index_all")


def _unindex(conn: sqlite3.Connection, stream: str, target: int) -> None:
    """Remove the current version of message ``target`` from the index, if it is there."""
    found = conn.execute(
        "SELECT row FROM search_rows WHERE stream = ? AND target = ?", (stream, target)
    ).fetchone()
    if found is not None:
        conn.execute("DELETE FROM search_index WHERE rowid = ?", (found[0],))
        conn.execute("DELETE FROM search_rows WHERE stream = ? AND target = ?", (stream, target))
        return
    stored = conn.execute(
        "SELECT ts FROM messages WHERE stream = ? AND seq = ?", (stream, target)
    ).fetchone()
    if stored is not None:
        # Its home row, if that row is still this message's (the row names stream and seq).
        conn.execute(
            "DELETE FROM search_index WHERE rowid = ? AND stream = ? AND seq = ?",
            (home_row(stored[0], target), stream, target),
        )


def forget(conn: sqlite3.Connection, pruned: Iterable[tuple[str, int, float, bytes]]) -> None:
    """Drop what the feature tables hold of messages retention is about to delete (stream,
    seq, ts, event; still stored): a message's search row (whichever version it holds: an
    edit of a pruned message has nothing left to edit), its delete mark, its reactions, and
    a pruned reaction's record. The index is the one place pruned text could stay."""
    for stream, seq, ts, payload in list(pruned):
        found = conn.execute(
            "SELECT row FROM search_rows WHERE stream = ? AND target = ?", (stream, seq)
        ).fetchone()
        if found is not None:
            conn.execute("DELETE FROM search_index WHERE rowid = ?", (found[0],))
            conn.execute("DELETE FROM search_rows WHERE stream = ? AND target = ?", (stream, seq))
        # Its home row, if that row is still its own (the row names stream and seq).
        conn.execute(
            "DELETE FROM search_index WHERE rowid = ? AND stream = ? AND seq = ?",
            (home_row(ts, seq), stream, seq),
        )
        conn.execute("DELETE FROM msg_deleted WHERE stream = ? AND seq = ?", (stream, seq))
        conn.execute("DELETE FROM reactions WHERE stream = ? AND target = ?", (stream, seq))
        event = _decode(payload)
        if event.get("kind") == REACT and isinstance(event.get("target"), int):
            conn.execute(
                "DELETE FROM reactions WHERE stream = ? AND target = ? AND seq = ?",
                (stream, event["target"], seq),
            )


# -- markers ---------------------------------------------------------------------------------


def mark(conn: sqlite3.Connection, user_key: str, stream: str, seq: int) -> bool | None:
    if seq == 0:
        return False
    last = conn.execute("SELECT MAX(seq) FROM messages WHERE stream = ?", (stream,)).fetchone()
    if seq > (last[0] or 0):
        return None
    cursor = conn.execute(
        "INSERT INTO read_markers VALUES (?, ?, ?) ON CONFLICT (user_key, stream)"
        " DO UPDATE SET seq = excluded.seq WHERE excluded.seq > read_markers.seq",
        (user_key, stream, seq),
    )
    return cursor.rowcount > 0


def marker(conn: sqlite3.Connection, user_key: str, stream: str) -> int:
    row = conn.execute(
        "SELECT seq FROM read_markers WHERE user_key = ? AND stream = ?", (user_key, stream)
    ).fetchone()
    return int(row[0]) if row else 0


def markers(conn: sqlite3.Connection, user_key: str) -> list[tuple[StreamId, int]]:
    rows = conn.execute(
        "SELECT stream, seq FROM read_markers WHERE user_key = ? ORDER BY stream", (user_key,)
    ).fetchall()
    return [(StreamId(stream), int(seq)) for stream, seq in rows]


# -- search ----------------------------------------------------------------------------------


def _quote(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'


def fts_query(query: Query, scope: SearchScope) -> str | None:
    """The FTS5 MATCH expression for a query over a scope; None if nothing can match."""
    if not query.phrases:
        return None  # punctuation only: no token to look up (see Query)
    text = " AND ".join(_quote(" ".join(phrase)) for phrase in query.phrases)
    scopes = [scope_token("s", stream.key) for stream in scope.streams]
    if scope.dm_user is not None:
        scopes.append(scope_token("u", scope.dm_user))
    if not scopes:
        return None
    return f"text : ({text}) AND scope : ({' OR '.join(scopes)})"


def search(
    conn: sqlite3.Connection, scope: SearchScope, text: str, before: float | None, limit: int
) -> SearchResult:
    query = Query.parse(text)
    match = fts_query(query, scope)
    if match is None:
        return SearchResult()
    upper = 2**63 - 1
    if before is not None and before * 1000 * TIE_SLOTS < upper:
        upper = max(0, math.ceil(before * 1000)) * TIE_SLOTS
    rows = conn.execute(
        "SELECT rowid, stream, seq, text FROM search_index"
        " WHERE search_index MATCH ? AND rowid < ? ORDER BY rowid DESC",
        (match, upper),
    )
    found: list[tuple[int, int, str, int]] = []  # (ts ms, seq, stream, seq)
    for rowid, stream, seq, body in _rows(rows):
        ms = rowid // TIE_SLOTS
        if len(found) >= limit and ms < found[limit - 1][0]:
            break  # every row sharing the last kept ts is in: ties can be ordered by seq
        if not scope.covers(StreamId(stream)):
            continue  # a scope-token hash collision
        if query.literals and not query.literals_match(body):
            continue
        found.append((ms, seq, stream, seq))
    rows.close()
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    payloads = []
    for _, _, stream, seq in found[:limit]:
        event = conn.execute(
            "SELECT event FROM messages WHERE stream = ? AND seq = ?", (stream, seq)
        ).fetchone()
        if event is not None:
            payloads.append(event[0])
    return SearchResult(payloads)


def _rows(cursor: sqlite3.Cursor) -> Iterator[tuple[int, str, int, str]]:
    yield from cursor
