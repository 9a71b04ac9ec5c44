"""The data directory at start-up: private modes, the earlier-data check, the admin token.

A server must not silently start over. The marker file (written at every start) and
``admin.token`` are evidence that a store existed here; if the store is then empty (a
deleted ``imchat.db``, a WAL lost after SIGKILL, a flushed Redis), starting would hand out
seq 1 again and a new admin token, so the server refuses unless told ``--fresh-store``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from .auth import hash_token, new_token
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

ADMIN_NICK = "admin"
ADMIN_TOKEN_FILE = "admin.token"
#: The label of the token in ``admin.token`` (earlier ones are revoked when it is rotated).
ADMIN_TOKEN_LABEL = "admin.token"
MARKER_FILE = "imchat.marker"
MARKER_TEXT = (
    "This directory holds an imchat server's data. While this file is here, the server\n"
    "refuses to start on an empty store (see --fresh-store).\n"
)
DB_FILES = ("imchat.db", "imchat.db-wal", "imchat.db-shm")


class EarlierDataMissing(StoreUnavailable):
    """Signs of an earlier store beside an empty one."""


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 and make it and its database files private on every start.

    ``mkdir(mode=0o700)`` does nothing for a directory that already exists (at 0755, say), and
    SQLite creates its files with the process umask (0644): both are fixed here, every time.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for name in (*DB_FILES, ADMIN_TOKEN_FILE, MARKER_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(data_dir / name, 0o600)


def evidence(data_dir: Path) -> list[str]:
    """Files showing that a store was in use here before."""
    return [name for name in (MARKER_FILE, ADMIN_TOKEN_FILE) if (data_dir / name).exists()]


def refuse_if_lost(data_dir: Path, *, store_empty: bool, fresh: bool, what: str) -> None:
    """Raise :class:`EarlierDataMissing` (one line) if ``what`` is empty but was not before."""
    found = evidence(data_dir)
    if store_empty and found and not fresh:
        raise EarlierDataMissing(
            f"refusing to start: {what} is empty or missing, but {' and '.join(found)} in "
            f"{data_dir} show it held data before (deleted database, lost WAL, flushed Redis?); "
            "restore it, or start with --fresh-store (IMCHAT_FRESH_STORE=1) to begin a new store"
        )


def write_marker(data_dir: Path) -> None:
    _write_private(data_dir / MARKER_FILE, MARKER_TEXT)


async def store_is_empty(store: Store) -> bool:
    """A store that never started holds no admin account (every start creates it)."""
    record = await store.lookup_user(ADMIN_NICK)
    return record is None or record.account is None


async def ensure_admin(store: Store, data_dir: Path, *, rotate: bool) -> None:
    """Create the admin account if missing; write a new token if ``admin.token`` is gone.

    ``rotate`` (this data dir served before: its marker is there) revokes every earlier
    ``admin.token`` token first: deleting the file is how an operator retires a token that
    leaked. A node starting on a new data dir (a cluster's new member) only adds its token.
    On a cluster the tokens are shared, so a node that rotates revokes the one the other
    nodes' files hold.
    """
    token_file = data_dir / ADMIN_TOKEN_FILE
    record = await store.lookup_user(ADMIN_NICK)
    if record is not None and record.account is not None and token_file.exists():
        return
    if record is None or record.account is None:
        await store.create_account(ADMIN_NICK, admin=True)
    revoked = 0
    for info in await store.list_tokens(ADMIN_NICK) if rotate else []:
        if info.label == ADMIN_TOKEN_LABEL and await store.revoke_token(info.id):
            revoked += 1
    token = new_token()
    await store.add_token(ADMIN_NICK, hash_token(token), ADMIN_TOKEN_LABEL)
    _write_private(token_file, token + "\n")
    log.info(
        "admin account %r: token written to %s%s",
        ADMIN_NICK,
        token_file.resolve(),
        f" (the earlier admin.token revoked: {revoked})" if revoked else "",
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
