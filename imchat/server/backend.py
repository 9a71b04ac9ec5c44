"""Where a server keeps its state: the one place that picks the store and the fan-out.

With ``redis_url`` both live in that Redis (shared by every node of a cluster); otherwise
the store is SQLite in ``data_dir`` and the fan-out stays in this process. Redis modules are
imported only on that path, so a single server never loads redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ServerConfig
from .fanout import Fanout, LocalFanout
from .store import Store

#: The SQLite database's file name in the data directory.
DB_FILE = "imchat.db"


@dataclass(slots=True, frozen=True)
class Backend:
    """A store and the fan-out that goes with it, neither opened yet."""

    store: Store
    fanout: Fanout


def sqlite_path(config: ServerConfig) -> Path:
    return Path(config.data_dir) / DB_FILE


def open_store(config: ServerConfig, *, serving: bool = False) -> Store:
    """The store alone (for tools such as ``imchat user``); call its ``open()`` to use it.

    Only the server (``serving``) indexes at open the search rows a killed server left
    waiting: a tool may run beside a live server, whose waiting rows are its own."""
    if config.redis_url is not None:
        from .redis_store import RedisStore

        return RedisStore(
            config.redis_url, prefix=config.redis_prefix, wait_replicas=config.redis_wait
        )
    from .sqlite_store import SQLiteStore

    return SQLiteStore(sqlite_path(config), catch_up_index=serving)


def open_backend(config: ServerConfig) -> Backend:
    """The store and fan-out ``config`` chooses; the server opens both at start."""
    store = open_store(config, serving=True)
    if config.redis_url is not None:
        from .redis_fanout import RedisFanout
        from .redis_store import RedisStore

        assert isinstance(store, RedisStore)
        fanout = RedisFanout(store, node_timeout=config.node_timeout, guest_hold=config.guest_hold)
        return Backend(store, fanout)
    return Backend(store, LocalFanout())
