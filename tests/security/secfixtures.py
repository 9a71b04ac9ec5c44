"""Fixtures for the security tests: in-process servers on port 0 and raw frame clients.

Test modules import them (``from secfixtures import raw_fixture, …``); the fixture names
are ``raw`` and ``start_server``. Not a conftest.py: the suite-wide tests import their
helpers with ``from conftest import …``, which a second conftest module would shadow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from secutil import Raw, StartServer

from imchat.server import ChatServer, ServerConfig


@pytest.fixture(name="start_server")
async def start_server_fixture(tmp_path: Path) -> AsyncIterator[StartServer]:
    """``await start_server(**config_overrides)``: a server on 127.0.0.1:0, stopped at teardown."""
    started: list[ChatServer] = []

    async def start(**overrides: Any) -> ChatServer:
        overrides.setdefault("data_dir", tmp_path / f"data{len(started)}")
        overrides.setdefault("addr_rate", 0)  # every test client comes from 127.0.0.1
        overrides.setdefault("addr_rooms_per_minute", 0)
        overrides.setdefault("addr_guests_per_minute", 0)
        server = ChatServer(ServerConfig(port=0, **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture(name="raw")
async def raw_fixture() -> AsyncIterator[Callable[..., Awaitable[Raw]]]:
    """``await raw(port)``: a :class:`Raw` connection, closed at teardown."""
    opened: list[Raw] = []

    async def open_(port: int, **kwargs: Any) -> Raw:
        conn = await Raw.open(port, **kwargs)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()
