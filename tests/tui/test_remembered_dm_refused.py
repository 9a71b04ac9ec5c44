"""A remembered DM partner (dm_peers.py) whose first history request is refused is listed at
once, with the refusal in its log, and its history is asked for again: when the user opens
it, and at the next connect (Pilot, real server).

It used to be listed only once a later connect fetched its history: a DM delivered to an
earlier run and never read stayed invisible for the whole session in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imchat.client import Connection
from imchat.client.session import ChatSession, ConvKey
from imchat.protocol import History
from imchat.tui.app import ChatApp
from imchat.tui.dm_peers import DmPeers
from imchat.tui.widgets import ConversationList

from .conftest import FAST, ServerHandle, fixed_time, has_line, running, until
from .test_app import client
from .test_dm_view import LOBBY, admin_elsewhere, said, titles, until_queued_drained

BOB = ConvKey.dm("Bob")


class RefusesBobsHistory(Connection):
    """A real connection whose first ``refusals`` requests of the recent history with Bob
    are answered by the server with an error (they are sent for a room that is not there),
    as a server out of read budget answers ``rate_limited``."""

    refusals = 1
    refused = 0

    async def request(self, message: Any, /, **fields: Any) -> dict[str, Any]:
        cls = type(self)
        if (
            isinstance(message, History)
            and (message.with_ or "").lower() == "bob"
            and message.before is None
            and cls.refused < cls.refusals
        ):
            cls.refused += 1
            message = History(room="no-such-room", limit=message.limit)
        return await super().request(message, **fields)


@pytest.mark.parametrize("retry", ["opened", "reconnect"])
async def test_a_remembered_dm_whose_history_is_refused_is_listed_and_tried_again(
    server: ServerHandle, tmp_path: Path, retry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RefusesBobsHistory, "refused", 0)
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        # A DM another session of the admin received (so the queue no longer holds it), and
        # nobody read (no marker names the stream): only dm_peers.json remembers Bob.
        await bob.request("dm", to="admin", text="did you see this?")
        phone = await admin_elsewhere(server)
        await until_queued_drained(phone, 1)
        await phone.close()
        peers = DmPeers(tmp_path / "peers")
        peers.add("127.0.0.1", server.port, "admin", "Bob")

        async def connect() -> Connection:
            return await RefusesBobsHistory.connect("127.0.0.1", server.port)

        session = ChatSession(
            "admin",
            "127.0.0.1",
            server.port,
            token=server.admin_token,
            backoff=FAST,
            rooms=["lobby"],
            connector=connect,
        )
        app = ChatApp(session, time_format=fixed_time, cursor_blink=False, dm_peers=peers)
        async with running(app) as pilot:
            assert RefusesBobsHistory.refused == 1
            await until(pilot, lambda: "Bob" in titles(app), "the DM listed")
            assert has_line(app, BOB, "no_such_room"), "the refusal shown in its log"
            assert said(app, BOB) == []
            assert app.current == LOBBY
            if retry == "opened":
                await pilot.press(f"alt+{titles(app).index('Bob') + 1}")
                await until(pilot, lambda: app.current == BOB, "looking at the DM")
            else:
                await bob.request("say", room="lobby", text="before the drop")
                app.session._conn.abort()  # type: ignore[union-attr]
                await until(pilot, lambda: has_line(app, LOBBY, "reconnected"), "reconnected")
            await until(pilot, lambda: said(app, BOB) == ["did you see this?"], "the DM shown")
            assert titles(app).count("Bob") == 1
            if retry == "reconnect":  # fetched off screen: unread, as at a good first try
                sidebar = app.query_one(ConversationList)
                await until(
                    pilot,
                    lambda: (s := sidebar.get(BOB)) is not None and s.unread == 1,
                    "the DM counted unread",
                )
