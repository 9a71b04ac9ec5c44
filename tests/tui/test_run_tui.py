"""``run_tui`` builds the session the CLI asked for."""

from __future__ import annotations

from typing import Any

import pytest

from imchat.tui import run_tui
from imchat.tui.app import ChatApp


def test_run_tui_passes_its_arguments_to_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(self: ChatApp) -> None:
        session = self.session
        seen.update(
            host=session.host,
            port=session.port,
            nick=session.nick,
            rooms=list(session.rooms),
            password=session._password,
            token=session._token,
            label=self.server_label,
        )

    monkeypatch.setattr(ChatApp, "run", fake_run)
    assert run_tui("chat.example", 7000, "alice", "#Dev", password="pw", tls=True) == 0
    assert seen == {
        "host": "chat.example",
        "port": 7000,
        "nick": "alice",
        "rooms": ["dev"],
        "password": "pw",
        "token": None,
        "label": "chat.example:7000",
    }


def test_run_tui_reads_input_with_the_paste_safe_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from textual._xterm_parser import XTermParser
    from textual.drivers import linux_driver

    from imchat.tui.paste_parser import PasteSafeParser

    monkeypatch.setattr(linux_driver, "XTermParser", XTermParser)
    seen: list[type] = []
    monkeypatch.setattr(ChatApp, "run", lambda self: seen.append(linux_driver.XTermParser))
    assert run_tui("127.0.0.1", 7000, "alice", None) == 0
    assert seen == [PasteSafeParser]
