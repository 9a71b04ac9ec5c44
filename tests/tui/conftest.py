"""Fixtures for the TUI's functional tests: a real server on an ephemeral port and apps on it.

Tests wait for conditions with a bounded loop of ``pilot.pause()`` (see :func:`until`),
never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from imchat.client.session import Backoff, ChatSession, ConvKey
from imchat.tui.app import ChatApp
from imchat.tui.config import TuiConfig
from imchat.tui.widgets import ChatInput

SIZE = (120, 36)
TIMEOUT = 10.0
FAST = Backoff(base=0.05, factor=2, cap=0.5)


def fixed_time(ts: float) -> str:
    return "12:34"


async def until(
    pilot: Pilot[Any], cond: Callable[[], bool], what: str = "condition", timeout: float = TIMEOUT
) -> None:
    """Let the app run until ``cond()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


class ServerHandle:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: Any = None
        self.port = 0

    async def start(self, port: int = 0, **overrides: Any) -> Any:
        from imchat.server.app import ChatServer
        from imchat.server.config import ServerConfig

        overrides.setdefault("addr_rate", 0)  # every test client comes from 127.0.0.1
        self.server = ChatServer(ServerConfig(port=port, data_dir=self.data_dir, **overrides))
        await self.server.start()
        self.port = self.server.port
        return self.server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerHandle]:
    handle = ServerHandle(tmp_path / "data")
    handle.data_dir.mkdir()
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


def make_app(
    server: ServerHandle,
    nick: str,
    room: str | None = "lobby",
    config: TuiConfig | None = None,
    **kwargs: Any,
) -> ChatApp:
    session = ChatSession(
        nick, "127.0.0.1", server.port, backoff=FAST, rooms=[room] if room else [], **kwargs
    )
    return ChatApp(
        session,
        server_label=f"127.0.0.1:{server.port}",
        time_format=fixed_time,
        config=config,
    )


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blinking cursor makes screens differ from run to run: no test app blinks."""
    monkeypatch.setattr(ChatApp, "CURSOR_BLINK", False)


def log_text(app: ChatApp, key: ConvKey) -> list[str]:
    view = app.views.get(key)
    return view.log_widget.plain_lines() if view else []


def has_line(app: ChatApp, key: ConvKey, needle: str) -> bool:
    return any(needle in line for line in log_text(app, key))


async def type_line(pilot: Pilot[Any], text: str) -> None:
    """Type into the input as a user would, then press Enter."""
    app = pilot.app
    chat_input = app.query_one("#input", ChatInput)
    chat_input.focus()
    chat_input.value = ""
    if len(text) <= 40:
        await pilot.press(*text)
    else:  # long lines: paste-like, to keep the tests quick
        chat_input.value = text
    await pilot.press("enter")


@contextlib.asynccontextmanager
async def running(app: ChatApp, size: tuple[int, int] = SIZE) -> AsyncIterator[Pilot[Any]]:
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.session.state.value == "connected", "connect")
        yield pilot
        await app.session.close()
