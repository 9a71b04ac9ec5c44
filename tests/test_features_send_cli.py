"""`imchat send --reply-to SEQ` and `--react SEQ` (revision 3), as a real subprocess."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, join, next_event
from test_send_cli import assert_one_line_error, imchat_send

pytestmark = pytest.mark.timeout(60)
QUIET = frozenset({"online", "offline", "joined", "parted"})


async def test_reply_to_and_react(server: Any, connect: Clients) -> None:
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    asked = await watcher.request("say", room="lobby", text="deploy?")
    await next_event(watcher, "msg", skip=QUIET)
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--reply-to", str(asked["seq"]), "done",
        port=server.port,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    reply = await next_event(watcher, "msg", skip=QUIET)
    assert (reply["text"], reply["reply_to"]) == ("done", asked["seq"])
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--react", str(asked["seq"]), "🚀", port=server.port
    )
    assert (result.returncode, result.stderr) == (0, "")
    react = await next_event(watcher, "msg", skip=QUIET)
    assert (react["kind"], react["target"], react["text"]) == ("react", asked["seq"], "🚀")
    missing = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--reply-to", "99", "x", port=server.port
    )
    assert_one_line_error(missing, "no_such_message")
    both = await imchat_send(
        "--room", "lobby", "--reply-to", "1", "--react", "1", "x", port=server.port
    )
    assert both.returncode == 2
