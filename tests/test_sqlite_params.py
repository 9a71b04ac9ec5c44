"""The store's adapters for None and bytes: found at once, and they change nothing stored."""

from __future__ import annotations

import sqlite3

from imchat.server import sqlite_params


def test_none_and_bytes_have_adapters_once_registered() -> None:
    sqlite_params.register()
    for kind in (type(None), bytes):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters


def test_values_are_stored_exactly_as_without_adapters() -> None:
    sqlite_params.register()
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b)")
    conn.execute("INSERT INTO t VALUES (?, ?)", (None, b"\x00event\xff"))
    assert conn.execute("SELECT typeof(a), typeof(b), b FROM t").fetchone() == (
        "null",
        "blob",
        b"\x00event\xff",
    )
