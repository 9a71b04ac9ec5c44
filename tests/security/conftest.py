"""Fixtures for the security tests: in-process servers on port 0 and raw frame clients.

Kept local to this directory so it stands on its own beside the suite-wide fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from secutil import Raw, StartServer

from imchat.server import ChatServer, ServerConfig


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """``await start_server(**config_overrides)``: a server on 127.0.0.1:0, stopped at teardown."""
    started: list[ChatServer] = []

    async def start(**overrides: Any) -> ChatServer:
        overrides.setdefault("data_dir", tmp_path / f"data{len(started)}")
        server = ChatServer(ServerConfig(port=0, **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[Raw]]]:
    """``await raw(port)``: a :class:`Raw` connection, closed at teardown."""
    opened: list[Raw] = []

    async def open_(port: int, **kwargs: Any) -> Raw:
        conn = await Raw.open(port, **kwargs)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()
