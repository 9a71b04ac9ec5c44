"""Cheaper binding of ``None`` and ``bytes`` parameters in the standard ``sqlite3`` module.

``sqlite3`` binds int, float, str and bytearray directly and sends every other parameter
through its adapter protocol: a registry lookup, then ``__adapt__`` on the protocol and
``__conform__`` on the value's type. For ``None`` and ``bytes`` both lookups fail, and each
failure formats an ``AttributeError`` that is then discarded: about 1.8 us per ``None``
and 0.3 us per ``bytes`` (CPython 3.11), on every statement. A stored message binds one of
each at least (no ``cid``, the event's bytes), in the writer thread every ``ok`` waits for.
An adapter registered for the type is found by the first lookup, and these return the value
unchanged, so what is stored is exactly what it was.

Registering is process-wide (the registry belongs to the module) and idempotent: the store
does it for every connection it opens.
"""

from __future__ import annotations

import sqlite3


def _null(value: None) -> None:
    return value


def register() -> None:
    sqlite3.register_adapter(type(None), _null)
    sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself for an exact bytes
