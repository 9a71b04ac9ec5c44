"""A failed backfill (imchat/tui/backfill.py) is tried again, and shows nothing twice.

The older history a conversation opened by a live DM asks for can fail two ways: the
connection drops while the request is out, or the server answers it with an error. Either
way the earlier DMs must still come above the new one: after the reconnect, or with the
next message. Real server; the connection is a real one that fails that one request.
"""

from __future__ import annotations

from typing import Any

import pytest

from imchat.client import Connection
from imchat.client.session import ChatSession, ConvKey
from imchat.protocol import History
from imchat.tui.app import ChatApp

from .conftest import FAST, ServerHandle, fixed_time, has_line, running, until
from .test_app import client
from .test_dm_view import LOBBY, admin_elsewhere, said, until_queued_drained

BOB = ConvKey.dm("Bob")


class FailsOneBackfill(Connection):
    """A real connection whose first ``history before`` (the backfill's request) fails:
    ``drop`` closes the connection with the request out, as a lost network does;
    ``refuse`` has the server answer it with an error (it names a room that is not there)."""

    how = "drop"
    tripped = False

    async def request(self, message: Any, /, **fields: Any) -> dict[str, Any]:
        cls = type(self)
        if isinstance(message, History) and message.before is not None and not cls.tripped:
            cls.tripped = True
            if cls.how == "drop":
                pending = super().request(message, **fields)
                self.abort()
                return await pending
            message = History(room="no-such-room", before=message.before, limit=message.limit)
        return await super().request(message, **fields)


@pytest.mark.parametrize("how", ["drop", "refuse"])
async def test_a_failed_backfill_is_tried_again_without_repeating_a_line(
    server: ServerHandle, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FailsOneBackfill, "how", how)
    monkeypatch.setattr(FailsOneBackfill, "tripped", False)
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        # Two DMs another session of the admin received (and nobody read).
        await bob.request("dm", to="admin", text="old one")
        await bob.request("dm", to="admin", text="old two")
        phone = await admin_elsewhere(server)
        await until_queued_drained(phone, 2)
        await phone.close()

        async def connect() -> Connection:
            return await FailsOneBackfill.connect("127.0.0.1", server.port)

        session = ChatSession(
            "admin", token=server.admin_token, backoff=FAST, rooms=["lobby"], connector=connect
        )
        app = ChatApp(session, time_format=fixed_time, cursor_blink=False)
        async with running(app) as pilot:
            await until(pilot, lambda: app.current == LOBBY, "in the lobby")
            await bob.request("dm", to="admin", text="new three")
            await until(pilot, lambda: has_line(app, BOB, "new three"), "the new DM")
            await until(pilot, lambda: FailsOneBackfill.tripped, "the backfill failed")
            if how == "drop":
                await until(pilot, lambda: has_line(app, BOB, "reconnected"), "reconnected")
                expected = ["old one", "old two", "new three"]
            else:
                await bob.request("dm", to="admin", text="new four")
                expected = ["old one", "old two", "new three", "new four"]
            await until(pilot, lambda: len(said(app, BOB)) >= len(expected), "the earlier DMs")
            assert said(app, BOB) == expected
            assert has_line(app, BOB, "the beginning of Bob")
