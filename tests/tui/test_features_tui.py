"""Revision 3 in the TUI, driven with Pilot against a real server: replies, edits, deletes,
reactions, typing, read markers synced between two sessions of one account, search."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from textual.widgets import OptionList

from imchat.client import Connection
from imchat.client.session import ChatSession, ConvKey
from imchat.tui.app import ChatApp
from imchat.tui.widgets import ConversationList
from imchat.tui.widgets.chat_input import ChatInput
from imchat.tui.widgets.pickers import ConfirmScreen, PickerScreen
from imchat.tui.widgets.typing_indicator import TypingIndicator

from .conftest import FAST, ServerHandle, fixed_time, has_line, log_text, make_app, running, until
from .conftest import type_line as type_line

LOBBY = ConvKey.room("lobby")


@contextlib.asynccontextmanager
async def client(server: ServerHandle, nick: str, **hello: Any) -> AsyncIterator[Connection]:
    conn = await Connection.connect("127.0.0.1", server.port)
    await conn.hello(nick, **hello)
    await conn.request("join", room="lobby")
    try:
        yield conn
    finally:
        await conn.close()


def line_with(app: ChatApp, needle: str) -> str:
    return next((line for line in log_text(app, LOBBY) if needle in line), "")


async def submit(pilot: Any, line: str) -> None:
    """Put a whole line in the input (as a paste would) and press Enter."""
    chat_input = pilot.app.query_one("#input", ChatInput)
    chat_input.focus()
    chat_input.value = line
    await pilot.press("enter")


async def pick(pilot: Any, needle: str) -> None:
    """Choose the option of the open picker whose label holds ``needle``."""
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, PickerScreen), "picker")
    options = app.screen.query_one(OptionList)
    labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
    options.highlighted = next(i for i, label in enumerate(labels) if needle in label)
    await pilot.press("enter")


async def test_edits_deletes_and_reactions_render_in_place(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        said = await bob.request("say", room="lobby", text="helo world")
        await until(pilot, lambda: has_line(alice, LOBBY, "helo world"), "message")
        entries = len(log_text(alice, LOBBY))
        await bob.request("edit", room="lobby", seq=said["seq"], text="hello world")
        await until(pilot, lambda: "hello world (edited)" in line_with(alice, "hello"), "edit")
        await bob.request("react", room="lobby", seq=said["seq"], emoji="👍")
        await until(pilot, lambda: "👍 1" in line_with(alice, "hello world"), "reaction")
        # alice toggles the same reaction from the picker: the count goes to 2, then back
        await submit(pilot, "/react 👍")
        await pick(pilot, "hello world")
        await until(pilot, lambda: "👍 2" in line_with(alice, "hello world"), "my reaction")
        await submit(pilot, "/react 👍")
        await pick(pilot, "hello world")
        await until(pilot, lambda: "👍 1" in line_with(alice, "hello world"), "taken back")
        await bob.request("delete", room="lobby", seq=said["seq"])
        await until(pilot, lambda: has_line(alice, LOBBY, "message deleted"), "deleted")
        assert not has_line(alice, LOBBY, "hello world")
        # edits, reactions and deletes are folded into their target: no lines of their own
        assert len(log_text(alice, LOBBY)) == entries


async def test_reply_shows_a_quote_line(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        await bob.request("say", room="lobby", text="who broke the build?")
        await until(pilot, lambda: has_line(alice, LOBBY, "who broke"), "question")
        await type_line(pilot, "/reply")
        await pick(pilot, "who broke")
        await until(pilot, lambda: "replying to" in str(alice.query_one(TypingIndicator).render()))
        await type_line(pilot, "not me")
        event = await bob.next_event(5)
        while event.get("text") != "not me":
            event = await bob.next_event(5)
        assert event["reply_to"] == 1
        await until(pilot, lambda: "↳ re bob: who broke the build?" in line_with(alice, "not me"))


async def test_up_on_empty_input_edits_the_last_message(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        await type_line(pilot, "teh plan")
        await until(pilot, lambda: has_line(alice, LOBBY, "teh plan"), "said")
        chat_input = alice.query_one("#input", ChatInput)
        await pilot.press("up")
        assert chat_input.value == "teh plan"
        assert alice.editing is not None
        chat_input.value = "the plan"
        await pilot.press("enter")
        await until(pilot, lambda: "the plan (edited)" in line_with(alice, "plan"), "edited")
        history = await bob.request("history", room="lobby")
        assert history["messages"][-1]["kind"] == "edit"


async def test_delete_asks_first(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "oops, wrong room")
        await until(pilot, lambda: has_line(alice, LOBBY, "oops"), "said")
        await type_line(pilot, "/delete")
        await pick(pilot, "oops")
        await until(pilot, lambda: isinstance(alice.screen, ConfirmScreen), "confirmation")
        await pilot.press("escape")  # keep it
        await type_line(pilot, "/delete")
        await pick(pilot, "oops")
        await until(pilot, lambda: isinstance(alice.screen, ConfirmScreen), "confirmation")
        await pilot.press("y")
        await until(pilot, lambda: has_line(alice, LOBBY, "message deleted"), "deleted")


async def test_typing_shows_in_the_status_line(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        await bob.request("typing", room="lobby")
        indicator = alice.query_one(TypingIndicator)
        await until(pilot, lambda: "bob is typing…" in str(indicator.render()), "typing")
        await bob.request("say", room="lobby", text="there")
        await until(pilot, lambda: "typing" not in str(indicator.render()), "typing ends")
        # typing in the input tells the others
        alice.query_one("#input", ChatInput).focus()
        await pilot.press("h")
        event = await bob.next_event(5)
        while event.get("type") != "typing":
            event = await bob.next_event(5)
        assert event == {"type": "typing", "room": "lobby", "from": "alice"}


async def test_markers_sync_between_two_sessions_of_one_account(server: ServerHandle) -> None:
    token = server.admin_token

    def admin_app() -> ChatApp:
        session = ChatSession(
            "admin", "127.0.0.1", server.port, token=token, backoff=FAST, rooms=["lobby", "ops"]
        )
        return ChatApp(session, time_format=fixed_time, cursor_blink=False)

    phone, laptop = admin_app(), admin_app()
    async with running(phone) as pp, running(laptop) as pl, client(server, "bob") as bob:
        ops = ConvKey.room("ops")
        # the laptop looks at #ops; the phone at #lobby
        await until(pl, lambda: ops in laptop.views, "ops view")
        laptop.current = ops
        phone.current = LOBBY
        await bob.request("say", room="lobby", text="one")
        await bob.request("say", room="lobby", text="two")
        sidebar = laptop.query_one(ConversationList)

        def unread() -> int:
            status = sidebar.get(LOBBY)
            return status.unread if status else -1

        await until(pl, lambda: has_line(laptop, LOBBY, "two"), "laptop got the messages")
        # the phone shows #lobby, so it marks it read; the laptop's count follows
        await until(pp, lambda: phone.chat_features.markers.get(LOBBY) == 2, "phone marked")
        await until(pl, lambda: unread() == 0, "laptop's unread count cleared by the phone")
        # a new session starts from the server's markers: nothing unread in #lobby
        tablet = admin_app()
        async with running(tablet) as pt:
            await until(pt, lambda: tablet.chat_features.markers.get(LOBBY) == 2, "restored")


async def test_new_since_line_and_unread_from_markers(server: ServerHandle) -> None:
    async with client(server, "bob") as bob:
        await bob.request("say", room="lobby", text="read already")
        alice_conn = await Connection.connect("127.0.0.1", server.port)
        await alice_conn.hello("admin", token=server.admin_token)
        await alice_conn.request("join", room="lobby")
        await alice_conn.request("mark", room="lobby", seq=1)
        await alice_conn.close()
        await bob.request("say", room="lobby", text="news")
        session = ChatSession(
            "admin", "127.0.0.1", server.port, token=server.admin_token, backoff=FAST,
            rooms=["ops", "lobby"],
        )  # fmt: skip
        app = ChatApp(session, time_format=fixed_time, cursor_blink=False)
        async with running(app) as pilot:
            sidebar = app.query_one(ConversationList)
            await until(
                pilot,
                lambda: (s := sidebar.get(LOBBY)) is not None and s.unread == 1,
                "one unread in #lobby, from the server's marker",
            )
            app.current = LOBBY
            log = app.views[LOBBY].log_widget

            def rows() -> list[str]:
                return [
                    "MARKER" if e.meta.get("read_marker") else e.body.plain
                    for e in log.entries
                    if e.meta.get("read_marker") or e.meta.get("seq") is not None
                ]

            await until(pilot, lambda: "MARKER" in rows(), "the read marker line")
            assert rows() == ["read already", "MARKER", "news"]


async def test_find_jumps_to_the_message(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        await bob.request("dm", to="alice", text="the secret word is xyzzy")
        await until(pilot, lambda: ConvKey.dm("bob") in alice.views, "dm arrived")
        alice.current = LOBBY
        await type_line(pilot, "/find XYZZY")
        await pick(pilot, "xyzzy")
        await until(pilot, lambda: alice.current == ConvKey.dm("bob"), "jumped to the DM")


async def test_a_reaction_with_newlines_stays_on_the_reactions_line(server: ServerHandle) -> None:
    """An emoji is 1-16 code points of text, newlines included: a reaction of newlines or
    spaces must not break the line of reaction chips into several (or blank) lines."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob") as bob:
        said = await bob.request("say", room="lobby", text="target")
        await until(pilot, lambda: has_line(alice, LOBBY, "target"), "message")
        await bob.request("react", room="lobby", seq=said["seq"], emoji="👍")
        await bob.request("react", room="lobby", seq=said["seq"], emoji="a\n\nb")
        await bob.request("react", room="lobby", seq=said["seq"], emoji="\n\n\n")
        await until(pilot, lambda: "👍 1" in "".join(log_text(alice, LOBBY)), "reactions")
        await until(pilot, lambda: "␣ 1" in line_with(alice, "target"), "all three")
        text, chips = line_with(alice, "target").split("\n")  # one line of chips
        assert text.endswith("target")
        assert "👍 1" in chips and "a b 1" in chips and "␣ 1" in chips, chips


async def test_leaving_the_shown_room_in_another_session_says_so(server: ServerHandle) -> None:
    """Membership is the user's: a part from another session of the account takes the room
    away here too. When it is the room on screen, the app shows another conversation; it
    must say why, where the user looks, or the next line typed for the room goes to that
    other conversation without a word."""
    async with client(server, "bob") as bob:
        await bob.request("dm", to="admin", text="hi")
        session = ChatSession(
            "admin", "127.0.0.1", server.port, token=server.admin_token, backoff=FAST,
            rooms=["lobby"],
        )  # fmt: skip
        app = ChatApp(session, time_format=fixed_time, cursor_blink=False)
        async with running(app) as pilot:
            await until(pilot, lambda: LOBBY in app.views, "in the lobby")
            app.current = LOBBY
            other = await Connection.connect("127.0.0.1", server.port)
            await other.hello("admin", token=server.admin_token)
            await other.request("part", room="lobby")
            await other.close()
            await until(pilot, lambda: app.current != LOBBY, "the lobby is gone")
            assert app.current is not None
            await until(
                pilot,
                lambda: any(
                    "left #lobby in another session" in line
                    for line in log_text(app, app.current)  # type: ignore[arg-type]
                ),
                "a line in the conversation now shown",
            )
            # Parting here says nothing of the kind.
            shown = app.current

            def notes() -> int:
                return sum("another session" in line for line in log_text(app, shown))

            before = notes()
            await submit(pilot, "/join ops")
            await until(pilot, lambda: app.current == ConvKey.room("ops"), "in ops")
            await submit(pilot, "/part")
            await until(pilot, lambda: ConvKey.room("ops") not in app.views, "left ops")
            assert app.current == shown
            assert notes() == before
