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
