"""The embedded store: SQLite in WAL mode with group commit on a writer thread.

Writes are queued as small operations; the writer thread takes everything queued, runs it in
one transaction and commits once, so a burst of messages costs one commit rather than one
each. A session's pipelined room messages are one such operation with one future
(:meth:`SQLiteStore.queue_append`). Sequence numbers are assigned inside that transaction,
which keeps them gapless: a failed batch assigns nothing. The batch's messages are inserted
together, a few statements for all of them (``_Writer.rows``), before the batch's other
kinds of operation run and before anything of theirs reads the table. Reads run on the
event loop's own connection (WAL lets them proceed beside the writer) and see only
committed data.

A plain message's search row is not written in its batch: it waits in the writer's backlog
(``features_sqlite.Backlog``) and goes into the index in a transaction of its own once
``INDEX_FLUSH_ROWS`` rows wait, the queue has been idle ``INDEX_FLUSH_IDLE`` seconds, or the
oldest row has waited ``INDEX_FLUSH_AGE``; a search, an edit, a delete and a prune flush it
first, through the writer. The message itself is committed before its ``ok`` as always.

``synchronous=NORMAL`` in WAL mode means a committed transaction survives the process being
killed (SIGKILL); surviving power loss as well needs ``synchronous=FULL`` (``durable_fsync``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from imchat.protocol import ErrorCode, ProtocolError

from . import features_sqlite, sqlite_params
from .hookstore import Hook
from .message_features import SearchResult, SearchScope
from .sqlite_rows import insert_rows
from .stats import STATS
from .store import (
    TOKEN_ID_LENGTH,
    Account,
    ClaimStatus,
    Draft,
    GuestClaim,
    Identity,
    RoomInfo,
    Stored,
    TokenInfo,
    UserRecord,
    new_epoch,
    new_ident,
    share_refusal,
    token_id,
)
from .streams import StreamId

log = logging.getLogger(__name__)

#: ``asyncio.Future()``, bound to the running loop (the loop's own ``create_future`` costs
#: more under uvloop).
_Future = asyncio.Future

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    key TEXT PRIMARY KEY,            -- lower-cased nick
    nick TEXT NOT NULL,              -- the spelling the user chose
    created REAL NOT NULL,
    account INTEGER NOT NULL DEFAULT 0,
    admin INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    user_key TEXT NOT NULL REFERENCES users(key) ON DELETE CASCADE,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    topic TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL,            -- 'r:<room>', 'd:<key> <key>' or 'a'
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    sender TEXT NOT NULL,
    cid TEXT,
    event BLOB NOT NULL,             -- the event's JSON exactly as sent
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_cid ON messages (sender, cid) WHERE cid IS NOT NULL;
CREATE TABLE IF NOT EXISTS seq_floor (
    stream TEXT PRIMARY KEY,         -- a stream some of whose messages were pruned
    seq INTEGER NOT NULL             -- its last seq when they were: never handed out again
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dm_queue (
    n INTEGER PRIMARY KEY,           -- queue order: seq order within a stream, never by clock
    recipient TEXT NOT NULL,         -- identity id
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source TEXT,                     -- whose share it is (Draft.queue_source); NULL: none
    UNIQUE (recipient, stream, seq)
);
CREATE TABLE IF NOT EXISTS dm_since (
    ident TEXT NOT NULL,             -- an identity reads a DM stream from its first message on
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (ident, stream)
) WITHOUT ROWID;
-- Webhooks (imchat.server.hookstore): the HTTP front end's, nothing else reads them.
CREATE TABLE IF NOT EXISTS http_hooks (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    room TEXT NOT NULL,
    user_key TEXT NOT NULL,
    secret TEXT NOT NULL DEFAULT '',
    template TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
"""

#: Revision 2 columns of ``users``: the identity holding the nick (``ident``), a guest
#: identity's resume hash, and when its hold ends (NULL while online).
IDENTITY_COLUMNS = (("ident", "TEXT"), ("resume", "TEXT"), ("held_until", "REAL"))


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a revision 1 database to revision 2 (idempotent).

    Accounts keep their nick key as identity id, so their DMs, cids and queue stay theirs.
    Guests of revision 1 had no identity: their nicks are free and their queues dropped.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    for name, kind in IDENTITY_COLUMNS:
        if name not in columns:
            conn.execute(f"ALTER TABLE users ADD COLUMN {name} {kind}")
    conn.execute("UPDATE users SET ident = key WHERE account = 1 AND ident IS NULL")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS users_held ON users (held_until) WHERE held_until IS NOT NULL"
    )
    # A guest's leave finds its row by identity: without this, each leave read every user
    # (10,000 guests leaving at once: 8 s of the writer, tests/test_sqlite_query_plans.py).
    conn.execute("CREATE INDEX IF NOT EXISTS users_ident ON users (ident) WHERE ident IS NOT NULL")
    # Whose share of the recipient's queue each queued DM is (``max_queued_per_sender``).
    # Rows queued before it was kept have none: they count against the whole queue only.
    if "source" not in {row[1] for row in conn.execute("PRAGMA table_info(dm_queue)")}:
        conn.execute("ALTER TABLE dm_queue ADD COLUMN source TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS dm_queue_source ON dm_queue (recipient, source)"
        " WHERE source IS NOT NULL"
    )
    old = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending_dms'"
    ).fetchone()
    if old is not None:
        conn.execute(
            "INSERT OR IGNORE INTO dm_queue (recipient, stream, seq)"
            " SELECT p.recipient, p.stream, p.seq FROM pending_dms p"
            " JOIN users u ON u.key = p.recipient AND u.account = 1 ORDER BY p.stream, p.seq"
        )
        conn.execute("DROP TABLE pending_dms")


#: Operations the writer runs per transaction at most; a bound keeps one commit short.
MAX_BATCH = 1024

#: The search backlog is written once this many rows wait (a bound on its memory and on the
#: flush transaction's length) ...
INDEX_FLUSH_ROWS = 1024
#: ... or once the writer's queue has been empty this long (seconds) ...
INDEX_FLUSH_IDLE = 0.05
#: ... or once its oldest row has waited this long. A search flushes it anyway; these bound
#: how much the next open indexes after a crash.
INDEX_FLUSH_AGE = 1.0


def _flush_delays() -> tuple[float, float]:
    """``INDEX_FLUSH_IDLE`` and ``INDEX_FLUSH_AGE``, or both from ``IMCHAT_INDEX_FLUSH_SECONDS``
    (tests hold rows back with it to see a crash recovered)."""
    override = os.environ.get("IMCHAT_INDEX_FLUSH_SECONDS")
    if override:
        return float(override), float(override)
    return INDEX_FLUSH_IDLE, INDEX_FLUSH_AGE


Operation = Callable[[sqlite3.Connection], Any]
#: Turns an operation's result into the future's, on the event loop (may raise).
Then = Callable[[Any], Any]
#: An operation, the future its result settles, what turns the result into the future's, and
#: how many writes it counts as against ``MAX_BATCH`` (a group of appends: one each).
Queued = tuple[Operation, asyncio.Future[Any], Then | None, int]
Result = tuple[asyncio.Future[Any], Any, BaseException | None, Then | None]


def _connect(path: Path, *, durable_fsync: bool) -> sqlite3.Connection:
    sqlite_params.register()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable_fsync else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class _Writer(threading.Thread):
    """Runs queued operations in batches, one transaction and one commit per batch."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="imchat-sqlite-writer", daemon=True)
        self._conn = conn
        self.loop = loop
        self.queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        #: Last seq per stream, valid only for committed data (cleared after a failed batch).
        self.last_seq: dict[str, int] = {}
        self.encoder = msgspec.json.Encoder()
        #: One cursor for the messages insert: ``Connection.execute`` makes a new cursor for
        #: every statement (~2,500 instructions a message).
        self.cursor = conn.cursor()
        #: Rows of messages stored in the open transaction but not yet inserted: they go in
        #: together (:meth:`insert_messages`), before anything that may read the table.
        self.rows: list[tuple[str, int, float, str, str | None, bytes]] = []
        #: Search rows of committed messages not yet in the index (writer thread only).
        self.backlog = features_sqlite.Backlog()
        self.flush_idle, self.flush_age = _flush_delays()
        #: No flush of the backlog on its own before this (monotonic): the last one failed.
        self._retry_at = 0.0
        #: Room messages one session queued since it last waited (loop thread only; see
        #: :meth:`SQLiteStore.queue_append`), not yet handed to the writer.
        self.group: _Group | None = None

    def submit(self, op: Operation, then: Then | None = None) -> asyncio.Future[Any]:
        """Run ``op`` in the next transaction; its result, passed through ``then`` on the
        event loop (which may raise), settles the future."""
        if self.group is not None:
            self.hand_over()  # what was queued before it runs before it
        future: asyncio.Future[Any] = _Future()  # the running loop's: this runs on it
        self.queue.put((op, future, then, 1))
        return future

    def hand_over(self) -> None:
        """Queue the open group of appends as one operation (loop thread)."""
        group = self.group
        if group is not None:
            self.group = None
            drafts = group.drafts
            self.queue.put(
                (
                    partial(_append_all, self, drafts),
                    group.future,
                    partial(_appended_all, group.rooms, drafts),
                    len(drafts),
                )
            )

    def stop(self) -> None:
        self.hand_over()
        self.queue.put(None)

    def run(self) -> None:
        backlog = self.backlog
        while True:
            if backlog:
                wait = max(self.flush_idle, self._retry_at - time.monotonic())
                try:
                    first = self.queue.get(timeout=wait)
                except queue.Empty:
                    self._flush()  # idle: index what waits
                    continue
            else:
                first = self.queue.get()
            if first is None:
                break
            batch = [first]
            size = first[3]
            stopping = False
            while size < MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += item[3]
            self._run_batch(batch)
            if stopping:
                break
            now = time.monotonic()
            if (
                backlog
                and now >= self._retry_at
                and (len(backlog) >= INDEX_FLUSH_ROWS or now - backlog.since >= self.flush_age)
            ):
                self._flush()  # after the batch's replies are on their way
        if backlog:
            self._flush()
        self._conn.close()

    def _flush(self) -> None:
        """Write the search backlog in a transaction of its own. If that fails the rows wait
        (a search, edit, delete or prune still writes them first, or fails as its batch does)
        and the next try on its own comes ``flush_age`` later, not at every batch."""
        if not self._run_batch([], flush=True):
            self._retry_at = time.monotonic() + self.flush_age

    def _run_batch(self, batch: list[Queued], *, flush: bool = False) -> bool:
        """One transaction: ``batch``'s operations, then (``flush``) the search backlog."""
        results: list[Result] = []
        conn = self._conn
        backlog = self.backlog
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            backlog.begin()
            for op, future, then, _ in batch:
                if self.rows and getattr(op, "func", None) not in _DEFERRING:
                    self.insert_messages()
                results.append((future, op(conn), None, then))
            self.insert_messages()
            if flush:
                backlog.flush(conn)
            conn.execute("COMMIT")
            backlog.committed()
            if batch:  # a flush on its own answers nobody: not a commit anyone waited for
                STATS.commit_seconds.observe(time.perf_counter() - started)
        except BaseException as exc:
            if batch:
                log.exception("store: a batch of %d writes failed and was rolled back", len(batch))
            else:
                log.exception("store: writing %d search rows failed; they wait", len(backlog))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.rows = []
            self.last_seq.clear()
            backlog.rolled_back()
            results = [(future, None, exc, None) for _, future, _, _ in batch]
            ok = False
        else:
            ok = True
        if results:
            self.loop.call_soon_threadsafe(_resolve_all, results)
        return ok

    def insert_messages(self) -> None:
        """Insert the messages appended since the last call (a few statements for all)."""
        if self.rows:
            rows, self.rows = self.rows, []
            insert_rows(self.cursor, _INSERT_MESSAGES, rows)

    def next_seq(self, conn: sqlite3.Connection, stream: str) -> int:
        last = self.last_seq.get(stream)
        if last is None:
            row = conn.execute(
                "SELECT MAX(seq) FROM messages WHERE stream = ?", (stream,)
            ).fetchone()
            floor = conn.execute("SELECT seq FROM seq_floor WHERE stream = ?", (stream,)).fetchone()
            last = max(row[0] or 0, floor[0] if floor else 0)
        return last + 1


def _end_identity(c: sqlite3.Connection, key: str) -> None:
    """The identity holding ``key`` is gone for good: its undelivered DMs, DM view and read
    markers are dropped and the nick no longer names it (its cids stay with the messages).

    A guest's ``users`` row goes too: a stranger begins an identity with every new nick, and
    nothing of a gone one may pile up. Its DM peers keep their history with it (their own
    ``dm_since`` names the stream; see ``handlers.queries.dm_peer_known``)."""
    row = c.execute("SELECT ident, account FROM users WHERE key = ?", (key,)).fetchone()
    if row is None or row[0] is None:
        return
    ident, account = row
    c.execute("DELETE FROM dm_queue WHERE recipient = ?", (ident,))
    c.execute("DELETE FROM dm_since WHERE ident = ?", (ident,))
    c.execute("DELETE FROM read_markers WHERE user_key = ?", (ident,))
    if not account:
        c.execute("DELETE FROM users WHERE key = ?", (key,))
        return
    c.execute(
        "UPDATE users SET ident = NULL, resume = NULL, held_until = NULL WHERE key = ?", (key,)
    )


def _credentials_changed(c: sqlite3.Connection) -> None:
    """Move :meth:`SQLiteStore.credentials_version` on, in the change's own transaction."""
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('credentials', '1') ON CONFLICT (key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def _end_expired(c: sqlite3.Connection, now: float) -> None:
    """End every guest identity whose hold is over (found through ``users_held``)."""
    for (key,) in c.execute(
        "SELECT key FROM users WHERE held_until IS NOT NULL AND held_until <= ? AND account = 0",
        (now,),
    ).fetchall():
        _end_identity(c, key)


def _resolve_all(results: list[Result]) -> None:
    # One callback per batch, in submission order: replies leave in the order requests came.
    for future, value, exc, then in results:
        if future.done():
            continue
        if exc is None and then is not None:
            try:
                value = then(value)
            except Exception as raised:
                exc = raised
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


def _append(writer: _Writer, draft: Draft, c: sqlite3.Connection) -> Stored | ProtocolError:
    """Store ``draft`` in the writer's transaction (:meth:`SQLiteStore.start_append`)."""
    owner = draft.owner or draft.sender_key  # draft.cid_owner, without the call
    stream = draft.stream.key
    source = draft.queue_source or stream
    # A refusal is returned, not raised: raising would roll back the whole batch.
    if draft.cid is not None or draft.feature is not None:
        writer.insert_messages()  # the lookups below must see this batch's messages
        if draft.cid is not None:
            row = c.execute(
                "SELECT seq, ts, event FROM messages WHERE sender = ? AND cid = ?",
                (owner, draft.cid),
            ).fetchone()
            if row is not None:
                return Stored(row[0], row[1], row[2], duplicate=True)
        early = features_sqlite.check(c, draft)  # revision 3: targets, repeated reactions
        if early is not None:
            return early
    if draft.pending_for is not None and (draft.max_queued or draft.max_queued_per_sender):
        (queued,) = c.execute(
            "SELECT COUNT(*) FROM dm_queue WHERE recipient = ?", (draft.pending_for,)
        ).fetchone()
        if draft.max_queued and queued >= draft.max_queued:
            return ProtocolError(
                ErrorCode.LIMIT_REACHED,
                f"{draft.max_queued} messages already wait for them; try later",
            )
        share = draft.max_queued_per_sender
        if share and queued >= share:
            (mine,) = c.execute(
                "SELECT COUNT(*) FROM dm_queue WHERE recipient = ? AND source = ?",
                (draft.pending_for, source),
            ).fetchone()
            if mine >= share:
                return ProtocolError(ErrorCode.LIMIT_REACHED, share_refusal(share))
    seq = writer.next_seq(c, stream)
    # To the millisecond, as round(t, 3) but without its decimal conversion (~2,000
    # instructions of the writer's per message).
    ts = round(time.time() * 1000) / 1000
    payload = writer.encoder.encode(msgspec.structs.replace(draft.event, seq=seq, ts=ts))
    writer.rows.append((stream, seq, ts, owner, draft.cid, payload))
    if draft.dm_idents is not None:
        for ident in set(draft.dm_idents):
            c.execute(
                "INSERT OR IGNORE INTO dm_since VALUES (?, ?, ?)",
                (ident, stream, seq),
            )
    if draft.pending_for is not None:
        c.execute(
            "INSERT INTO dm_queue (recipient, stream, seq, source) VALUES (?, ?, ?, ?)",
            (draft.pending_for, stream, seq, source),
        )
    features_sqlite.on_append(c, draft, seq, ts, writer.backlog)
    writer.last_seq[stream] = seq
    return Stored(seq, ts, payload)


def _appended(rooms: dict[str, RoomInfo], draft: Draft, stored: Stored | ProtocolError) -> Stored:
    """On the loop, once committed: a refusal raised, the room's ``last_seq`` moved on."""
    if isinstance(stored, ProtocolError):
        raise stored
    if stored.refused is not None:
        raise ProtocolError(ErrorCode(stored.refused), "no such message or not yours")
    key = draft.stream.key
    if not stored.duplicate and key.startswith("r:"):
        info = rooms.get(key[2:])
        if info is not None and stored.seq > info.last_seq:
            info.last_seq = stored.seq
    return stored


#: Room messages in one group at most (then the next starts): a bound on one operation.
MAX_GROUP = 256


class _Group:
    """Room messages one session queued without waiting in between (a run of pipelined
    says): one writer operation, one future settled with the list of their outcomes."""

    __slots__ = ("drafts", "future", "owner", "rooms")

    def __init__(self, owner: object, rooms: dict[str, RoomInfo]) -> None:
        self.owner = owner
        self.rooms = rooms
        self.drafts: list[Draft] = []
        self.future: asyncio.Future[list[Stored | Exception]] = _Future()


def _append_all(
    writer: _Writer, drafts: list[Draft], c: sqlite3.Connection
) -> list[Stored | ProtocolError]:
    """A group's messages, in order, in the writer's transaction."""
    return [_append(writer, draft, c) for draft in drafts]


#: Writer operations that leave their messages in ``_Writer.rows`` (the rest may read the
#: table, so the writer inserts those rows before running them).
_DEFERRING = (_append, _append_all)

# None and bytes bind through the adapters of :mod:`.sqlite_params` (sqlite3's own lookup
# for them failed twice per parameter, raising and formatting errors). OR FAIL: a statement
# of many rows that may abort keeps a statement journal (page copies) to undo its own rows;
# a failure here fails the whole batch, which is rolled back anyway.
_INSERT_MESSAGES = "INSERT OR FAIL INTO messages (stream, seq, ts, sender, cid, event) VALUES "


def _appended_all(
    rooms: dict[str, RoomInfo], drafts: list[Draft], results: list[Any]
) -> list[Stored | Exception]:
    """:func:`_appended` of each: a message's refusal is its own (an exception in its place),
    never its neighbours'. A stored message's room is moved on inline (a call less per
    message), its ``RoomInfo`` looked up once per stretch of one stream."""
    key: str | None = None
    info: RoomInfo | None = None
    for i, result in enumerate(results):
        if type(result) is not Stored or result.refused is not None:
            try:
                results[i] = _appended(rooms, drafts[i], result)
            except Exception as exc:
                results[i] = exc
            continue
        if result.duplicate:
            continue
        stream = drafts[i].stream.key
        if stream != key:
            key = stream
            info = rooms.get(stream[2:]) if stream.startswith("r:") else None
        if info is not None and result.seq > info.last_seq:
            info.last_seq = result.seq
    return results


class SQLiteStore:
    """:class:`imchat.server.store.Store` on a SQLite file in the data directory."""

    def __init__(
        self, path: Path, *, durable_fsync: bool = False, catch_up_index: bool = True
    ) -> None:
        self.path = path
        self._durable_fsync = durable_fsync
        #: Index at open the rows a killed server left waiting. Only the server may: a tool
        #: opening the database beside a running server must not take its waiting rows.
        self._catch_up_index = catch_up_index
        self._reader: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._rooms: dict[str, RoomInfo] = {}
        #: Seconds the last open spent building the search index (None: it was there).
        self.index_build_seconds: float | None = None
        #: Searches run on a thread of their own over this connection, one at a time.
        self._searcher: sqlite3.Connection | None = None
        self._search_lock = asyncio.Lock()
        self._epoch: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created private: it holds password hashes and every DM (SQLite would use the umask).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        writer_conn = _connect(self.path, durable_fsync=self._durable_fsync)
        try:
            with writer_conn:
                writer_conn.executescript(SCHEMA)
                writer_conn.execute("BEGIN IMMEDIATE")
                _migrate(writer_conn)
                writer_conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                # A new store is a new epoch; an existing one keeps its own (rev 2).
                writer_conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (new_epoch(),)
                )
                writer_conn.execute("COMMIT")
            self.index_build_seconds = features_sqlite.migrate(writer_conn)
            if self._catch_up_index:
                features_sqlite.catch_up(writer_conn)
            self._reader = _connect(self.path, durable_fsync=self._durable_fsync)
            self._load_rooms(self._reader)
        except BaseException:
            writer_conn.close()
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            raise
        self._writer = _Writer(writer_conn, asyncio.get_running_loop())
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    def _load_rooms(self, conn: sqlite3.Connection) -> None:
        last = dict(
            conn.execute(
                "SELECT stream, MAX(seq) FROM (SELECT stream, seq FROM messages"
                " UNION ALL SELECT stream, seq FROM seq_floor)"
                " WHERE stream LIKE 'r:%' GROUP BY stream"
            ).fetchall()
        )
        for name, topic in conn.execute("SELECT name, topic FROM rooms"):
            self._rooms[name] = RoomInfo(name, topic, last.get(StreamId.room(name).key, 0))

    def _submit(self, op: Operation) -> asyncio.Future[Any]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(op)

    # -- users and accounts ----------------------------------------------------------------

    async def lookup_user(self, key: str) -> UserRecord | None:
        # Read through: `imchat user …` may have changed accounts from another process.
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT nick, account, admin, password_hash, ident FROM users WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        nick, account, admin, password_hash, ident = row
        return UserRecord(
            nick, Account(nick, bool(admin), password_hash, ident or key) if account else None
        )

    async def remember_user(self, nick: str) -> None:
        key = nick.lower()
        await self._submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO users (key, nick, created) VALUES (?, ?, ?)",
                (key, nick, time.time()),
            )
        )

    async def create_account(
        self, nick: str, *, admin: bool = False, password_hash: str | None = None
    ) -> None:
        """Accounts outrank guests: a guest identity holding the nick ends here (rev 2)."""
        key = nick.lower()
        ident = new_ident("a")

        def op(c: sqlite3.Connection) -> None:
            _end_identity(c, key)
            _credentials_changed(c)
            c.execute(
                "INSERT INTO users (key, nick, created, account, admin, password_hash, ident)"
                " VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " nick = excluded.nick, account = 1, admin = excluded.admin,"
                " password_hash = excluded.password_hash, ident = excluded.ident,"
                " resume = NULL, held_until = NULL",
                (key, nick, time.time(), int(admin), password_hash, ident),
            )

        await self._submit(op)

    async def remove_account(self, key: str) -> bool:
        record = await self.lookup_user(key)
        if record is None or record.account is None:
            return False

        def op(c: sqlite3.Connection) -> None:
            _credentials_changed(c)
            c.execute("DELETE FROM tokens WHERE user_key = ?", (key,))
            # The account's identity ends: its queue and DM view do not pass to the nick's
            # next holder.
            _end_identity(c, key)
            c.execute(
                "UPDATE users SET account = 0, admin = 0, password_hash = NULL WHERE key = ?",
                (key,),
            )

        await self._submit(op)
        return True

    async def list_accounts(self) -> list[Account]:
        assert self._reader is not None
        rows = self._reader.execute(
            "SELECT nick, admin, password_hash FROM users WHERE account = 1 ORDER BY key"
        ).fetchall()
        return [Account(nick, bool(admin), password_hash) for nick, admin, password_hash in rows]

    async def set_password(self, key: str, password_hash: str) -> bool:
        def op(c: sqlite3.Connection) -> int:
            changed: int = c.execute(
                "UPDATE users SET password_hash = ? WHERE key = ? AND account = 1",
                (password_hash, key),
            ).rowcount
            if changed:
                _credentials_changed(c)
            return changed

        return bool(await self._submit(op))

    async def add_token(self, key: str, token_hash: str, label: str) -> None:
        await self._submit(
            lambda c: c.execute(
                "INSERT INTO tokens (token_hash, user_key, label, created) VALUES (?, ?, ?, ?)",
                (token_hash, key, label, time.time()),
            )
        )

    async def token_owner(self, token_hash: str) -> str | None:
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT user_key FROM tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return row[0] if row else None

    async def list_tokens(self, key: str | None) -> list[TokenInfo]:
        assert self._reader is not None
        query = "SELECT token_hash, user_key, label, created FROM tokens"
        args: tuple[str, ...] = ()
        if key is not None:
            query += " WHERE user_key = ?"
            args = (key,)
        rows = self._reader.execute(query + " ORDER BY created, token_hash", args).fetchall()
        return [TokenInfo(token_id(h), user, label, created) for h, user, label, created in rows]

    async def revoke_token(self, token_id: str) -> bool:
        def op(c: sqlite3.Connection) -> int:
            # Compared as a whole prefix, never with LIKE: an id is data, not a pattern.
            deleted: int = c.execute(
                "DELETE FROM tokens WHERE substr(token_hash, 1, ?) = ?",
                (TOKEN_ID_LENGTH, token_id.lower()),
            ).rowcount
            if deleted:
                _credentials_changed(c)
            return deleted

        return bool(await self._submit(op))

    async def credentials_version(self) -> str:
        assert self._reader is not None
        row = self._reader.execute("SELECT value FROM meta WHERE key = 'credentials'").fetchone()
        return str(row[0]) if row is not None else "0"

    # -- identities (rev 2) ----------------------------------------------------------------

    async def epoch(self) -> str:
        if self._epoch is None:
            assert self._reader is not None
            row = self._reader.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            self._epoch = str(row[0])
        return self._epoch

    async def identity(self, key: str) -> Identity | None:
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT nick, account, admin, password_hash, ident, held_until FROM users"
            " WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        nick, account, admin, password_hash, ident, held_until = row
        if account:
            ident = ident or key
            return Identity(nick, ident, Account(nick, bool(admin), password_hash, ident))
        if ident is None or (held_until is not None and held_until <= time.time()):
            return None
        return Identity(nick, ident, held_until=held_until)

    async def claim_guest(
        self, nick: str, resume: str | None, new_resume: str, hold: float
    ) -> GuestClaim:
        key = nick.lower()
        ident = new_ident("g")

        def op(c: sqlite3.Connection) -> GuestClaim:
            now = time.time()
            # A nick without a row (every one of a connect storm's): one statement, not two.
            if (
                c.execute(
                    "INSERT INTO users (key, nick, created, ident, resume) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (key, nick, now, ident, new_resume),
                ).rowcount
                == 1
            ):
                return GuestClaim(ClaimStatus.NEW, Identity(nick, ident))
            # The insert found the nick's row (in this transaction: it is still there).
            held_nick, account, held, held_resume, held_until = c.execute(
                "SELECT nick, account, ident, resume, held_until FROM users WHERE key = ?",
                (key,),
            ).fetchone()
            if account:
                return GuestClaim(ClaimStatus.ACCOUNT)
            if held is not None and (held_until is None or held_until > now):
                if resume is None or resume != held_resume:
                    return GuestClaim(ClaimStatus.TAKEN, held_until=held_until)
                c.execute("UPDATE users SET held_until = NULL WHERE key = ?", (key,))
                return GuestClaim(ClaimStatus.RESUMED, Identity(held_nick, held))
            _end_identity(c, key)
            c.execute(
                "INSERT INTO users (key, nick, created, ident, resume) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET nick = excluded.nick, ident = excluded.ident,"
                " resume = excluded.resume, held_until = NULL",
                (key, nick, now, ident, new_resume),
            )
            return GuestClaim(ClaimStatus.NEW, Identity(nick, ident))

        claim: GuestClaim = await self._submit(op)
        return claim

    async def guest_left(self, ident: str, hold: float) -> None:
        """Hold the identity; identities whose hold ended meanwhile end now (their queues and
        DM views go), so nothing is kept for a gone guest longer than until the next leave."""

        def op(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute(
                "UPDATE users SET held_until = ? WHERE ident = ? AND account = 0",
                (now + hold, ident),
            )
            _end_expired(c, now)

        await self._submit(op)

    async def dm_streams(self, ident: str) -> list[str]:
        assert self._reader is not None
        rows = self._reader.execute("SELECT stream FROM dm_since WHERE ident = ?", (ident,))
        return [row[0] for row in rows]

    async def hold_guests(self, hold: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            now = time.time()
            _end_expired(c, now)
            # Rows of guests gone under earlier versions, which kept them (see _end_identity).
            c.execute("DELETE FROM users WHERE account = 0 AND ident IS NULL")
            c.execute(
                "UPDATE users SET held_until = ? WHERE account = 0 AND ident IS NOT NULL",
                (now + hold,),
            )

        await self._submit(op)

    # -- rooms -----------------------------------------------------------------------------

    async def room(self, name: str) -> RoomInfo | None:
        return self._rooms.get(name)

    async def rooms(self) -> list[RoomInfo]:
        return list(self._rooms.values())

    async def room_count(self) -> int:
        return len(self._rooms)

    async def room_page(self, after: str | None, limit: int) -> tuple[list[RoomInfo], bool]:
        names = (name for name in self._rooms if after is None or name > after)
        page = heapq.nsmallest(limit + 1, names)
        return [self._rooms[name] for name in page[:limit]], len(page) > limit

    async def create_room(self, name: str) -> RoomInfo:
        info = self._rooms.get(name)
        if info is not None:
            return info
        await self._submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO rooms (name, created) VALUES (?, ?)", (name, time.time())
            )
        )
        return self._rooms.setdefault(name, RoomInfo(name))

    async def set_topic(self, name: str, topic: str) -> None:
        await self._submit(
            lambda c: c.execute("UPDATE rooms SET topic = ? WHERE name = ?", (topic, name))
        )
        self._rooms[name].topic = topic

    # -- messages --------------------------------------------------------------------------

    async def append(self, draft: Draft) -> Stored:
        stored: Stored = await self.start_append(draft)
        return stored

    def start_append(self, draft: Draft) -> asyncio.Future[Stored]:
        """:meth:`append` without a task of its own: the commit is queued now (so appends
        reach the store in call order) and the future settles in the writer's one callback
        per batch. Messages use this (a task per message cost about 4 µs); a run's room
        messages use :meth:`queue_append`.

        What the writer runs and what settles the future are module functions bound with
        ``partial`` (two closures over a message's fields cost more), and
        ``asyncio.Future()`` takes the running loop for less than ``loop.create_future()``
        (uvloop's goes through Python).
        """
        writer = self._writer
        assert writer is not None, "store is not open"
        if writer.group is not None:
            writer.hand_over()  # what was queued before it runs before it
        future: asyncio.Future[Stored] = _Future()
        # writer.submit(op, then), inline: a call less per message.
        writer.queue.put(
            (partial(_append, writer, draft), future, partial(_appended, self._rooms, draft), 1)
        )
        return future

    def queue_append(
        self, draft: Draft, owner: object
    ) -> tuple[asyncio.Future[list[Stored | Exception]], int]:
        """:meth:`start_append` for a run of room messages: the ones ``owner`` (a session)
        queues without waiting in between share one writer operation and one future, which
        settles with every outcome in order (a refusal an exception in its place); this
        message's is at the index returned. The group goes to the writer when the loop next
        runs a callback (so after the run's first wait), or before anything queued after it.

        A future per message (made, settled by ``_resolve_all`` through a partial, awaited)
        and a queue item each cost ~3,000 instructions a message on the loop. The future is
        one session's: a cancelled task cancels the future it waits on, which must not
        cancel another session's messages.
        """
        writer = self._writer
        assert writer is not None, "store is not open"
        group = writer.group
        if group is None or group.owner is not owner or len(group.drafts) >= MAX_GROUP:
            if group is not None:
                writer.hand_over()
            group = writer.group = _Group(owner, self._rooms)
            writer.loop.call_soon(writer.hand_over)
        drafts = group.drafts
        drafts.append(draft)
        return group.future, len(drafts) - 1

    def _first_visible(self, stream: str, viewer: str | None) -> int | None:
        """The first seq of a DM stream ``viewer`` may read (0: all); None: nothing."""
        if viewer is None or not stream.startswith("d:") or viewer in stream[2:].split(" "):
            return 0  # rooms, announcements, and accounts from before revision 2
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT seq FROM dm_since WHERE ident = ? AND stream = ?", (viewer, stream)
        ).fetchone()
        return int(row[0]) if row is not None else None

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Delete messages older than ``before_ts`` and all but the last ``keep`` of each
        stream; the number deleted. Each stream's last seq is kept in ``seq_floor`` first, so
        a stream pruned empty still continues from it. What the revision 3 tables hold of a
        pruned message (its search row, delete mark, reactions) goes with it: pruned text
        must not stay searchable or stored."""

        writer = self._writer
        assert writer is not None, "store is not open"

        def op(c: sqlite3.Connection) -> int:
            writer.backlog.flush(c)  # a pruned message's waiting row must not outlive it
            c.execute(
                "INSERT INTO seq_floor (stream, seq) SELECT stream, MAX(seq) FROM messages"
                " WHERE true GROUP BY stream"
                " ON CONFLICT (stream) DO UPDATE SET seq = max(seq, excluded.seq)"
            )
            deleted = 0
            if before_ts is not None:
                old = "FROM messages WHERE ts < ?"
                features_sqlite.forget(
                    c, c.execute(f"SELECT stream, seq, ts, event {old}", (before_ts,))
                )
                deleted += c.execute(f"DELETE {old}", (before_ts,)).rowcount
            if keep:
                beyond = (
                    "(SELECT stream, seq FROM (SELECT stream, seq, ROW_NUMBER() OVER"
                    " (PARTITION BY stream ORDER BY seq DESC) AS n FROM messages) WHERE n > ?)"
                )
                features_sqlite.forget(
                    c,
                    c.execute(
                        "SELECT stream, seq, ts, event FROM messages"
                        f" WHERE (stream, seq) IN {beyond}",
                        (keep,),
                    ),
                )
                deleted += c.execute(
                    f"DELETE FROM messages WHERE (stream, seq) IN {beyond}", (keep,)
                ).rowcount
            if deleted:
                c.execute(
                    "DELETE FROM dm_queue WHERE NOT EXISTS (SELECT 1 FROM messages m"
                    " WHERE m.stream = dm_queue.stream AND m.seq = dm_queue.seq)"
                )
            return deleted

        deleted: int = await self._submit(op)
        return deleted

    async def history(
        self,
        stream_id: StreamId,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        viewer: str | None = None,
    ) -> list[bytes]:
        assert self._reader is not None
        stream = stream_id.key
        first = self._first_visible(stream, viewer)
        if first is None:
            return []
        lower = max(after if after is not None else -1, first - 1)
        upper = before if before is not None else 2**63 - 1
        if after is not None:
            rows = self._reader.execute(
                "SELECT event FROM messages WHERE stream = ? AND seq > ? AND seq < ?"
                " ORDER BY seq LIMIT ?",
                (stream, lower, upper, limit),
            ).fetchall()
        else:
            rows = self._reader.execute(
                "SELECT event FROM messages WHERE stream = ? AND seq > ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (stream, lower, upper, limit),
            ).fetchall()
            rows.reverse()
        return [row[0] for row in rows]

    async def peek_pending(self, recipient: str, limit: int) -> list[tuple[StreamId, int, bytes]]:
        assert self._reader is not None
        rows = self._reader.execute(
            "SELECT q.stream, q.seq, m.event FROM dm_queue q JOIN messages m"
            " ON m.stream = q.stream AND m.seq = q.seq"
            " WHERE q.recipient = ? ORDER BY q.n LIMIT ?",
            (recipient, limit),
        ).fetchall()
        return [(StreamId(stream), seq, event) for stream, seq, event in rows]

    async def drop_pending(self, recipient: str, items: list[tuple[StreamId, int]]) -> None:
        if not items:
            return
        await self._submit(
            lambda c: c.executemany(
                "DELETE FROM dm_queue WHERE recipient = ? AND stream = ? AND seq = ?",
                [(recipient, stream.key, seq) for stream, seq in items],
            )
        )

    async def claim_pending(self, recipient: str, stream_id: StreamId, seq: int) -> bool:
        stream = stream_id.key

        def op(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "DELETE FROM dm_queue WHERE recipient = ? AND stream = ? AND seq = ?",
                (recipient, stream, seq),
            )
            return cursor.rowcount == 1

        claimed: bool = await self._submit(op)
        return claimed

    async def set_pending(self, recipient: str, stream_id: StreamId, seq: int) -> None:
        stream = stream_id.key
        await self._submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO dm_queue (recipient, stream, seq) VALUES (?, ?, ?)",
                (recipient, stream, seq),
            )
        )

    # -- revision 3: read markers and search (see features_sqlite) ---------------------------

    async def last_seq(self, stream: StreamId) -> int:
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT MAX(seq) FROM messages WHERE stream = ?", (stream.key,)
        ).fetchone()
        return int(row[0] or 0)

    async def mark(self, user_key: str, stream: StreamId, seq: int) -> bool | None:
        moved: bool | None = await self._submit(
            lambda c: features_sqlite.mark(c, user_key, stream.key, seq)
        )
        return moved

    async def marker(self, user_key: str, stream: StreamId) -> int:
        assert self._reader is not None
        return features_sqlite.marker(self._reader, user_key, stream.key)

    async def markers(self, user_key: str) -> list[tuple[StreamId, int]]:
        assert self._reader is not None
        return features_sqlite.markers(self._reader, user_key)

    async def flush_search_index(self) -> int:
        """Write the search rows that wait, through the writer; the number written. Once this
        returns, every message acknowledged before the call is in the index."""
        writer = self._writer
        assert writer is not None, "store is not open"
        written: int = await self._submit(writer.backlog.flush)
        return written

    async def search(
        self, scope: SearchScope, text: str, *, before: float | None, limit: int
    ) -> SearchResult:
        await self.flush_search_index()
        async with self._search_lock:
            if self._searcher is None:
                self._searcher = _connect(self.path, durable_fsync=self._durable_fsync)
            conn = self._searcher
            return await asyncio.to_thread(features_sqlite.search, conn, scope, text, before, limit)

    # -- webhooks (imchat.server.hookstore.HookStore) --------------------------------------

    async def add_hook(self, token_hash: str, hook: Hook) -> None:
        await self._submit(
            lambda c: c.execute(
                "INSERT INTO http_hooks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token_hash,
                    hook.kind,
                    hook.room,
                    hook.user,
                    hook.secret,
                    hook.template,
                    hook.created,
                ),
            )
        )

    async def hook_by_token(self, token_hash: str) -> Hook | None:
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT token_hash, kind, room, user_key, secret, template, created"
            " FROM http_hooks WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return _hook(row) if row else None

    async def list_hooks(self) -> list[Hook]:
        assert self._reader is not None
        rows = self._reader.execute(
            "SELECT token_hash, kind, room, user_key, secret, template, created"
            " FROM http_hooks ORDER BY created, token_hash"
        ).fetchall()
        return [_hook(row) for row in rows]

    async def remove_hook(self, hook_id: str) -> bool:
        deleted: int = await self._submit(
            lambda c: (
                c.execute(
                    "DELETE FROM http_hooks WHERE substr(token_hash, 1, ?) = ?",
                    (TOKEN_ID_LENGTH, hook_id.lower()),
                ).rowcount
            )
        )
        return deleted > 0

    async def ping(self) -> None:
        await self._submit(lambda c: c.execute("SELECT 1").fetchone())


def _hook(row: tuple[Any, ...]) -> Hook:
    token_hash, kind, room, user, secret, template, created = row
    return Hook(token_id(token_hash), kind, room, user, secret, template, created)
