"""The embedded store: SQLite in WAL mode with group commit on a writer thread.

Writes are queued as small operations; the writer thread takes everything queued, runs it in
one transaction and commits once, so a burst of messages costs one commit rather than one
each. Sequence numbers are assigned inside that transaction, which keeps them gapless: a
failed batch assigns nothing. Reads run on the event loop's own connection (WAL lets them
proceed beside the writer) and see only committed data.

``synchronous=NORMAL`` in WAL mode means a committed transaction survives the process being
killed (SIGKILL); surviving power loss as well needs ``synchronous=FULL`` (``durable_fsync``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .store import (
    TOKEN_ID_LENGTH,
    Account,
    Draft,
    RoomInfo,
    Stored,
    TokenInfo,
    UserRecord,
    token_id,
)
from .streams import StreamId

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
CREATE TABLE IF NOT EXISTS pending_dms (
    recipient TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (recipient, stream, seq)
) WITHOUT ROWID;
"""

#: Operations the writer runs per transaction at most; a bound keeps one commit short.
MAX_BATCH = 1024

Operation = Callable[[sqlite3.Connection], Any]


def _connect(path: Path, *, durable_fsync: bool) -> sqlite3.Connection:
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
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[Operation, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        #: Last seq per stream, valid only for committed data (cleared after a failed batch).
        self.last_seq: dict[str, int] = {}
        self.encoder = msgspec.json.Encoder()

    def submit(self, op: Operation) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stopping = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stopping:
                break
        self._conn.close()

    def _run_batch(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                results.append((future, op(conn), None))
            conn.execute("COMMIT")
        except BaseException as exc:
            log.exception("store: a batch of %d writes failed and was rolled back", len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.last_seq.clear()
            results = [(future, None, exc) for _, future in batch]
        self._loop.call_soon_threadsafe(_resolve_all, results)

    def next_seq(self, conn: sqlite3.Connection, stream: str) -> int:
        last = self.last_seq.get(stream)
        if last is None:
            row = conn.execute(
                "SELECT MAX(seq) FROM messages WHERE stream = ?", (stream,)
            ).fetchone()
            floor = conn.execute("SELECT seq FROM seq_floor WHERE stream = ?", (stream,)).fetchone()
            last = max(row[0] or 0, floor[0] if floor else 0)
        return last + 1


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    # One callback per batch, in submission order: replies leave in the order requests came.
    for future, value, exc in results:
        if future.done():
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


class SQLiteStore:
    """:class:`imchat.server.store.Store` on a SQLite file in the data directory."""

    def __init__(self, path: Path, *, durable_fsync: bool = False) -> None:
        self.path = path
        self._durable_fsync = durable_fsync
        self._reader: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._rooms: dict[str, RoomInfo] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created private: it holds password hashes and every DM (SQLite would use the umask).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        writer_conn = _connect(self.path, durable_fsync=self._durable_fsync)
        try:
            with writer_conn:
                writer_conn.executescript(SCHEMA)
                writer_conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
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
            "SELECT nick, account, admin, password_hash FROM users WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        nick, account, admin, password_hash = row
        return UserRecord(nick, Account(nick, bool(admin), password_hash) if account else None)

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
        key = nick.lower()
        await self._submit(
            lambda c: c.execute(
                "INSERT INTO users (key, nick, created, account, admin, password_hash)"
                " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " nick = excluded.nick, account = 1, admin = excluded.admin,"
                " password_hash = excluded.password_hash",
                (key, nick, time.time(), int(admin), password_hash),
            )
        )

    async def remove_account(self, key: str) -> bool:
        record = await self.lookup_user(key)
        if record is None or record.account is None:
            return False

        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM tokens WHERE user_key = ?", (key,))
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
        changed: int = await self._submit(
            lambda c: (
                c.execute(
                    "UPDATE users SET password_hash = ? WHERE key = ? AND account = 1",
                    (password_hash, key),
                ).rowcount
            )
        )
        return changed > 0

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
        # Compared as a whole prefix, never with LIKE: an id is data, not a pattern.
        deleted: int = await self._submit(
            lambda c: (
                c.execute(
                    "DELETE FROM tokens WHERE substr(token_hash, 1, ?) = ?",
                    (TOKEN_ID_LENGTH, token_id.lower()),
                ).rowcount
            )
        )
        return deleted > 0

    # -- rooms -----------------------------------------------------------------------------

    async def room(self, name: str) -> RoomInfo | None:
        return self._rooms.get(name)

    async def rooms(self) -> list[RoomInfo]:
        return list(self._rooms.values())

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
        writer = self._writer
        assert writer is not None, "store is not open"
        stream = draft.stream.key

        def op(c: sqlite3.Connection) -> Stored:
            if draft.cid is not None:
                row = c.execute(
                    "SELECT seq, ts, event FROM messages WHERE sender = ? AND cid = ?",
                    (draft.sender_key, draft.cid),
                ).fetchone()
                if row is not None:
                    return Stored(row[0], row[1], row[2], duplicate=True)
            seq = writer.next_seq(c, stream)
            ts = round(time.time(), 3)
            payload = writer.encoder.encode(msgspec.structs.replace(draft.event, seq=seq, ts=ts))
            c.execute(
                "INSERT INTO messages (stream, seq, ts, sender, cid, event)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stream, seq, ts, draft.sender_key, draft.cid, payload),
            )
            if draft.pending_for is not None:
                c.execute(
                    "INSERT INTO pending_dms VALUES (?, ?, ?)",
                    (draft.pending_for, stream, seq),
                )
            writer.last_seq[stream] = seq
            return Stored(seq, ts, payload)

        stored: Stored = await writer.submit(op)
        room = draft.stream.room_name
        if not stored.duplicate and room is not None:
            info = self._rooms.get(room)
            if info is not None and stored.seq > info.last_seq:
                info.last_seq = stored.seq
        return stored

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Delete messages older than ``before_ts`` and all but the last ``keep`` of each
        stream; the number deleted. Each stream's last seq is kept in ``seq_floor`` first, so
        a stream pruned empty still continues from it."""

        def op(c: sqlite3.Connection) -> int:
            c.execute(
                "INSERT INTO seq_floor (stream, seq) SELECT stream, MAX(seq) FROM messages"
                " WHERE true GROUP BY stream"
                " ON CONFLICT (stream) DO UPDATE SET seq = max(seq, excluded.seq)"
            )
            deleted = 0
            if before_ts is not None:
                deleted += c.execute("DELETE FROM messages WHERE ts < ?", (before_ts,)).rowcount
            if keep:
                deleted += c.execute(
                    "DELETE FROM messages WHERE (stream, seq) IN (SELECT stream, seq FROM"
                    " (SELECT stream, seq, ROW_NUMBER() OVER"
                    " (PARTITION BY stream ORDER BY seq DESC) AS n FROM messages) WHERE n > ?)",
                    (keep,),
                ).rowcount
            if deleted:
                c.execute(
                    "DELETE FROM pending_dms WHERE NOT EXISTS (SELECT 1 FROM messages m"
                    " WHERE m.stream = pending_dms.stream AND m.seq = pending_dms.seq)"
                )
            return deleted

        deleted: int = await self._submit(op)
        return deleted

    async def history(
        self, stream_id: StreamId, *, after: int | None, before: int | None, limit: int
    ) -> list[bytes]:
        assert self._reader is not None
        stream = stream_id.key
        lower = after if after is not None else -1
        upper = before if before is not None else 2**63 - 1
        if after is not None:
            rows = self._reader.execute(
                "SELECT event FROM messages WHERE stream = ? AND seq > ? AND seq < ?"
                " ORDER BY seq LIMIT ?",
                (stream, lower, upper, limit),
            ).fetchall()
        else:
            rows = self._reader.execute(
                "SELECT event FROM messages WHERE stream = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (stream, upper, limit),
            ).fetchall()
            rows.reverse()
        return [row[0] for row in rows]

    async def take_pending(self, recipient_key: str) -> list[bytes]:
        def op(c: sqlite3.Connection) -> list[bytes]:
            rows = c.execute(
                "SELECT m.event FROM pending_dms p JOIN messages m"
                " ON m.stream = p.stream AND m.seq = p.seq"
                " WHERE p.recipient = ? ORDER BY m.ts, m.seq",
                (recipient_key,),
            ).fetchall()
            if rows:
                c.execute("DELETE FROM pending_dms WHERE recipient = ?", (recipient_key,))
            return [row[0] for row in rows]

        result: list[bytes] = await self._submit(op)
        return result

    async def claim_pending(self, recipient_key: str, stream_id: StreamId, seq: int) -> bool:
        stream = stream_id.key

        def op(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "DELETE FROM pending_dms WHERE recipient = ? AND stream = ? AND seq = ?",
                (recipient_key, stream, seq),
            )
            return cursor.rowcount == 1

        claimed: bool = await self._submit(op)
        return claimed

    async def set_pending(self, recipient_key: str, stream_id: StreamId, seq: int) -> None:
        stream = stream_id.key
        await self._submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO pending_dms VALUES (?, ?, ?)", (recipient_key, stream, seq)
            )
        )
