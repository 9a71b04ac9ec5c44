"""Many rows per ``INSERT`` statement, for the SQLite writer's hot inserts.

``sqlite3`` runs a statement in one ``sqlite3_step`` with the GIL released, so inserting N
rows one statement each (``execute`` per row, or ``executemany``) releases and takes the
GIL N times and resets and re-binds the statement N times. While the event loop is busy
writing a broadcast, each take of the GIL may wait for the loop's switch interval (5 ms);
one statement of many rows steps once. Rows go in chunks whose sizes are powers of two up
to ``MAX_ROWS`` (27 rows: 16 + 8 + 2 + 1), so a table needs at most seven distinct
statements in the connection's statement cache, not one per batch size.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain

#: The most rows one statement inserts (times the columns: far below SQLite's 32,766
#: variables).
MAX_ROWS = 64


@lru_cache(maxsize=64)
def _statement(head: str, width: int, rows: int) -> str:
    values = "(" + ", ".join("?" * width) + ")"
    return head + ", ".join([values] * rows)


def insert_rows(cursor: sqlite3.Cursor, head: str, rows: Sequence[tuple[object, ...]]) -> None:
    """``head`` (``"INSERT INTO t (a, b) VALUES "``) with every row of ``rows``, in order."""
    if not rows:
        return
    width = len(rows[0])
    start, left = 0, len(rows)
    while left:
        n = MAX_ROWS if left >= MAX_ROWS else 1 << (left.bit_length() - 1)
        cursor.execute(
            _statement(head, width, n), list(chain.from_iterable(rows[start : start + n]))
        )
        start += n
        left -= n
