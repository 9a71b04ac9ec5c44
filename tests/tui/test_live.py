"""Daily use: keys in bursts, pastes, floods, small terminals, and the defects of issue 11.

Against a real in-process server; keys that a terminal delivers in one read are posted to
the app in one go (as the driver does), not one Pilot press at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from rich.cells import get_character_cell_size
from textual import events
from textual._styles_cache import StylesCache
from textual.geometry import Offset, Region
from textual.pilot import Pilot
from textual.selection import Selection
from textual.strip import Strip
from textual.widget import Widget

from imchat.client import Connection
from imchat.client.session import ConvKey, State
from imchat.tui.app import ChatApp
from imchat.tui.read_marker import marker_entry
from imchat.tui.render import NICK_WIDTH
from imchat.tui.screens import Confirm
from imchat.tui.widgets import ChatInput, MemberList, MessageLog
from imchat.tui.widgets.message_log import MIN_BODY

from .conftest import ServerHandle, has_line, log_text, make_app, running, type_line, until

LOBBY = ConvKey.room("lobby")


def burst(app: ChatApp, *keys: str) -> None:
    """Keys as one terminal read delivers them: all queued before the app handles any."""
    driver = app._driver
    assert driver is not None
    for key in keys:
        if len(key) == 1:
            char: str | None = key
            name = {" ": "space"}.get(key, key)
        else:
            char, name = None, key
        if len(key) == 1 and not key.isalnum() and key != " ":
            name = unicodedata.name(key).lower().replace(" ", "_")
        event = events.Key(name, char)
        event.set_sender(app)
        driver.send_message(event)


def paste(app: ChatApp, text: str) -> None:
    driver = app._driver
    assert driver is not None
    event = events.Paste(text)
    event.set_sender(app)
    driver.send_message(event)


@contextlib.asynccontextmanager
async def listener(server: ServerHandle, nick: str = "bob") -> AsyncIterator[list[str]]:
    """A library client in the lobby; yields the texts of the messages it receives."""
    conn = await Connection.connect("127.0.0.1", server.port)
    await conn.hello(nick)
    await conn.request("join", room="lobby")
    texts: list[str] = []

    async def pump() -> None:
        with contextlib.suppress(Exception):
            while True:
                event = await conn.next_event()
                if event.get("type") == "msg" and event.get("from") != nick:
                    texts.append(str(event["text"]))

    task = asyncio.create_task(pump())
    try:
        yield texts
    finally:
        task.cancel()
        await conn.close()


def chat_input(app: ChatApp) -> ChatInput:
    return app.query_one(ChatInput)


def log(app: ChatApp, key: ConvKey = LOBBY) -> MessageLog:
    return app.views[key].log_widget


async def settle(pilot: Pilot[Any], texts: list[str], count: int) -> None:
    await until(pilot, lambda: len(texts) >= count, f"{count} messages at the server")
    # Nothing more comes: the outbox is empty and no extra message arrives meanwhile.
    await until(pilot, lambda: not pilot.app.session.outbox, "outbox empty")  # type: ignore[attr-defined]


# -- input ------------------------------------------------------------------------------------


async def test_keys_in_one_burst_send_exactly_what_was_typed(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        await until(pilot, lambda: "bob" in alice.nick_candidates(), "bob is here")
        burst(alice, *"first", "enter", *"second", "enter", *"third", "enter")
        await settle(pilot, texts, 3)
        # Editing keys are applied in order too: "ab<BS>c" is "ac", not "ab" then "c".
        burst(alice, *"ab", "backspace", "c", "left", "x", "enter", *"tail")
        await settle(pilot, texts, 4)
        assert texts == ["first", "second", "third", "axc"]
        assert chat_input(alice).value == "tail"
        await until(pilot, lambda: has_line(alice, LOBBY, "axc"), "shown")
        said = [x for x in log_text(alice, LOBBY) if "alice " in x and "--" not in x]
        assert [x.split("alice ", 1)[1] for x in said] == ["first", "second", "third", "axc"]


async def test_pastes_become_one_message_and_long_ones_ask_first(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        one = "just one line"
        paste(alice, one)
        await until(pilot, lambda: chat_input(alice).value == one, "pasted")
        await pilot.press("enter")
        await settle(pilot, texts, 1)

        five = "\n".join(f"line {n}" for n in range(1, 6))
        paste(alice, five.replace("\n", "\r"))  # terminals paste CR for newlines
        await until(pilot, lambda: chat_input(alice).value == five, "five lines in the input")
        await pilot.press("enter")
        await settle(pilot, texts, 2)

        fifty = "\n".join(f"row {n}" for n in range(50))
        paste(alice, fifty)
        await until(pilot, lambda: isinstance(alice.screen, Confirm), "asked")
        assert "50 lines" in alice.screen.question  # type: ignore[attr-defined]
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(alice.screen, Confirm), "dismissed")
        assert chat_input(alice).value == ""
        paste(alice, fifty)
        await until(pilot, lambda: isinstance(alice.screen, Confirm), "asked again")
        await pilot.press("y")
        await until(pilot, lambda: chat_input(alice).value == fifty, "fifty lines in the input")
        await pilot.press("enter")
        await settle(pilot, texts, 3)
        assert texts == [one, five, fifty]
        # A multi-line message is shown on as many rows, each under the text column.
        await until(pilot, lambda: has_line(alice, LOBBY, "row 49"), "shown")
        entry = next(e for e in log(alice).entries if "row 0" in e.body.plain)
        width = log(alice)._width
        strips = log(alice)._render_entry(entry, width)
        assert len(strips) == 50
        assert strips[1].text.startswith(" " * entry.prefix.cell_len + "row 1")
        # The first message taller than the window still leaves the view at the bottom.
        lg = log(alice)
        await pilot.pause()
        assert lg.scroll_y == lg.max_scroll_y > 0


async def test_one_row_lines_stay_one_row_in_a_narrow_log(server: ServerHandle) -> None:
    """Below the width that leaves a text column beside the time and nick, an entry is run
    together and wrapped at the full width: the read marker's rule (cropped to the width
    where there is a column) became nine rows of dashes at 30 columns. A message still wraps."""
    alice = make_app(server, "alice")
    async with running(alice, size=(30, 14)) as pilot:

        def laid_out() -> bool:
            view = alice.views.get(LOBBY)
            return view is not None and view.log_widget._width > 0

        await until(pilot, laid_out, "the lobby laid out")
        lg = log(alice)
        assert lg._width - (6 + NICK_WIDTH + 1) < MIN_BODY  # the narrow layout
        rows = lg._render_entry(marker_entry(), lg._width)
        assert len(rows) == 1 and "new since" in rows[0].text
        said = alice.formatter.message(
            {"type": "msg", "from": "bob", "text": "word " * 20, "ts": 0, "seq": 1}
        )
        assert len(lg._render_entry(said, lg._width)) > 1


async def test_shift_enter_and_ctrl_j_add_a_line(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        burst(alice, *"one", "shift+enter", *"two", "ctrl+j", *"three", "enter")
        await settle(pilot, texts, 1)
        assert texts == ["one\ntwo\nthree"]


async def test_an_over_long_line_is_refused_locally_with_a_short_error(
    server: ServerHandle,
) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        box = chat_input(alice)
        await until(pilot, lambda: box.max_text == 4000, "max_text from welcome")
        box.value = "x" * 3990
        await pilot.pause()
        assert box.border_subtitle == "3990/4000"
        box.value = "y" * 4100
        await pilot.pause()
        assert "4100/4000" in str(box.border_subtitle)
        await pilot.press("enter")
        await until(pilot, lambda: has_line(alice, LOBBY, "too long to send"), "error line")
        assert box.value == "y" * 4100  # kept, to shorten
        errors = [e for e in log(alice).entries if "too long" in e.body.plain]
        assert len(errors) == 1 and len(errors[0].body.plain) < 100
        # No toast over the input (its border shows the count), and none is ever long.
        assert not any("too long" in str(n.message) for n in alice._notifications)
        assert all(len(str(n.message)) <= 120 for n in alice._notifications)
        await type_line(pilot, "short one")
        await settle(pilot, texts, 1)
        assert texts == ["short one"]


# -- the live view ------------------------------------------------------------------------------


async def test_the_log_follows_a_flood_and_shows_new_while_scrolled_up(tmp_path: Any) -> None:
    server = ServerHandle(tmp_path / "data")
    server.data_dir.mkdir()
    await server.start(rate=1e6, burst=100_000)
    try:
        alice = make_app(server, "alice")
        async with running(alice) as pilot:
            conn = await Connection.connect("127.0.0.1", server.port)
            await conn.hello("bob")
            await conn.request("join", room="lobby")
            await asyncio.gather(
                *(conn.request("say", room="lobby", text=f"flood {n}") for n in range(2000))
            )
            lg = log(alice)
            # 2,000 lines drawn on a shared 2-core machine: a liveness bound, not a speed test.
            await until(
                pilot, lambda: has_line(alice, LOBBY, "flood 1999"), "flood arrived", timeout=30
            )
            assert lg.following
            await until(pilot, lambda: lg.scroll_y == lg.max_scroll_y > 0, "at the bottom")
            # Scrolled up: new messages do not move the view, and are counted.
            await pilot.press("pageup")
            await until(pilot, lambda: not lg.following, "scrolled up")
            where = lg.scroll_y
            for n in range(3):
                await conn.request("say", room="lobby", text=f"while away {n}")
            await until(pilot, lambda: lg.unseen == 3, "3 new")
            assert lg.scroll_y == where
            news = alice.views[LOBBY].news
            await until(pilot, lambda: bool(news.display), "'3 new' shown")
            assert "3 new ↓" in str(news.render())
            # End (at the end of the input) returns to the newest and follows again.
            await pilot.press("end")
            assert lg.following and lg.unseen == 0
            await until(pilot, lambda: lg.scroll_y == lg.max_scroll_y, "back at the bottom")
            await until(pilot, lambda: not news.display, "no more 'new'")
            await pilot.press("pageup")
            await until(pilot, lambda: not lg.following, "scrolled up again")
            await type_line(pilot, "back")  # sending returns too
            await until(pilot, lambda: lg.following, "following after sending")
            await conn.close()
    finally:
        await server.stop()


async def test_a_flood_repaints_the_log_not_the_widgets_that_did_not_change(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Textual's compositor asks every widget whose container overlaps a changed region for
    its lines at every frame: while the log changed, the room list, member list and status
    bar were rendered again each frame (and the log's growing virtual size asked for a
    layout of the whole screen each time), though none of them had changed. Renders are
    counted where Textual renders a widget's lines (its styles cache)."""
    renders: Counter[str] = Counter()
    original = StylesCache.render_widget

    def render_widget(cache: StylesCache, widget: Widget, crop: Region) -> list[Strip]:
        renders[type(widget).__name__] += 1
        return original(cache, widget, crop)

    monkeypatch.setattr(StylesCache, "render_widget", render_widget)
    server = ServerHandle(tmp_path / "data")
    server.data_dir.mkdir()
    await server.start(rate=1e6, burst=100_000)
    try:
        alice = make_app(server, "alice")
        async with running(alice) as pilot:
            conn = await Connection.connect("127.0.0.1", server.port)
            await conn.hello("bob")
            await conn.request("join", room="lobby")
            await until(pilot, lambda: "bob" in alice.query_one(MemberList).nicks, "bob listed")
            await conn.request("say", room="lobby", text="before")
            await until(pilot, lambda: has_line(alice, LOBBY, "before"), "first line")
            await pilot.pause()
            renders.clear()
            for batch in range(5):
                await asyncio.gather(
                    *(conn.request("say", room="lobby", text=f"f{batch} {n}") for n in range(40))
                )
                shown = functools.partial(has_line, alice, LOBBY, f"f{batch} 39")
                await until(pilot, shown, "batch shown")
                await pilot.pause()
            assert renders["MessageLog"] >= 5  # the log was redrawn as the flood arrived
            unchanged = {k: renders[k] for k in ("ConversationList", "MemberList", "StatusBar")}
            assert unchanged == {"ConversationList": 0, "MemberList": 0, "StatusBar": 0}
            # When their data changes they render again, and the screen shows it.
            renders.clear()
            await conn.request("dm", to="alice", text="psst")

            def on_screen() -> str:
                return "\n".join(s.text for s in alice.screen._compositor.render_strips())

            await until(pilot, lambda: "@bob(1)" in on_screen(), "the hotlist shows the DM")
            assert "@bob 1" in on_screen()  # the conversation list, with its unread count
            assert renders["StatusBar"] >= 1 and renders["ConversationList"] >= 1
            await conn.close()
    finally:
        await server.stop()


async def test_a_conversation_opens_at_its_newest_lines(server: ServerHandle) -> None:
    async with listener(server, "carol"):
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello("dave")
        await conn.request("join", room="dev")
        for n in range(35):
            await conn.request("say", room="dev", text=f"history {n}")
        alice = make_app(server, "alice")
        async with running(alice) as pilot:
            await type_line(pilot, "/join dev")
            dev = ConvKey.room("dev")
            await until(pilot, lambda: has_line(alice, dev, "history 34"), "history")
            await pilot.pause()
            lg = log(alice, dev)
            await until(pilot, lambda: lg.scroll_y == lg.max_scroll_y > 0, "at the bottom")
        await conn.close()


# -- layout -------------------------------------------------------------------------------------


async def test_small_terminals_keep_the_conversation_readable(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        conversations = alice.query_one("#conversations")
        assert not alice.query_one("#sidebar").display or not alice.query_one("#sidebar").size
        assert conversations.size.width >= 70
        assert log(alice)._width - 19 >= 50  # message text after time and nick columns
        await pilot.press("f2")
        await pilot.pause()
        assert alice.query_one("#sidebar").size.width > 0
        assert conversations.size.width >= 50
        await pilot.press("f2")
        await pilot.resize_terminal(40, 15)
        await pilot.pause()
        assert alice.query_one("#sidebar").size.width == 0
        assert alice.query_one("#members").size.width == 0
        assert conversations.outer_size.width == 40
        await pilot.press("f3")
        await pilot.pause()
        assert alice.query_one("#members").size.width > 0
        assert conversations.outer_size.width >= 20
        await type_line(pilot, "still works")
        await until(pilot, lambda: has_line(alice, LOBBY, "still works"), "sent")


async def test_a_long_nick_does_not_push_the_text_right(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    long_nick = "n" * 32
    async with running(alice) as pilot:
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello(long_nick)
        await conn.request("join", room="lobby")
        await conn.request("say", room="lobby", text="aligned?")
        await until(pilot, lambda: has_line(alice, LOBBY, "aligned?"), "message")
        entry = next(e for e in log(alice).entries if e.body.plain == "aligned?")
        assert entry.prefix.cell_len == 6 + NICK_WIDTH + 1
        assert entry.prefix.plain.rstrip().endswith("…")
        await conn.close()


async def test_a_crlf_text_pasted_through_tmux_keeps_its_lines(server: ServerHandle) -> None:
    """tmux pastes a CRLF text with each LF made a CR (``a\\r\\rb``): one line break each,
    not a blank line between every two lines."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        paste(alice, "first\r\rsecond\r\r\r\rafter a blank line")
        want = "first\nsecond\n\nafter a blank line"
        await until(pilot, lambda: chat_input(alice).value == want, "three lines and a blank")


async def test_emoji_rows_keep_their_width(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    texts = ["family 👨‍👩‍👧 here", "thumbs 👍🏽 up", "heart ❤️ x", "flag 🇫🇷 y"]
    async with running(alice) as pilot, listener(server) as got:
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello("carol")
        await conn.request("join", room="lobby")
        for text in texts:
            await conn.request("say", room="lobby", text=text)
        await until(pilot, lambda: len(got) == len(texts), "sent")
        await until(pilot, lambda: has_line(alice, LOBBY, "flag"), "shown")
        await conn.close()
        lg = log(alice)
        for entry in lg.entries:
            for strip in lg._render_entry(entry, lg._width):
                assert strip.cell_length == lg._width
                # A terminal without grapheme clusters (tmux 3.3) adds up code points: the
                # row must be as wide for it as for Rich, or its right border moves.
                assert sum(get_character_cell_size(ch) for ch in strip.text) == lg._width


# -- defects --------------------------------------------------------------------------------------


async def test_ctrl_c_copies_a_selection_in_the_log(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "copy me please")
        await until(pilot, lambda: has_line(alice, LOBBY, "copy me please"), "shown")
        await pilot.pause()
        lg = log(alice)
        row = next(i for i, e in enumerate(lg.entries) if "copy me" in e.body.plain)
        y = lg._starts[row]
        alice.screen.selections = {lg: Selection(Offset(19, y), Offset(26, y))}
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert alice.is_running
        assert alice.clipboard == "copy me"


async def test_quit_with_unsent_lines_asks_first(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    from imchat.client.session import Backoff

    alice.session.backoff = Backoff(base=30, cap=30)
    async with running(alice) as pilot:
        await server.stop()
        await until(pilot, lambda: alice.session.state is State.RECONNECTING, "offline")
        await type_line(pilot, "not sent yet")
        await until(pilot, lambda: len(alice.session.outbox) == 1, "pending")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(alice.screen, Confirm), "asked")
        assert "1 message is not sent" in alice.screen.question  # type: ignore[attr-defined]
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(alice.screen, Confirm), "stayed")
        assert alice.is_running
        await type_line(pilot, "/quit")
        await until(pilot, lambda: isinstance(alice.screen, Confirm), "asked again")
        await pilot.press("y")
        await until(pilot, lambda: not alice.is_running, "quit")


async def test_a_shutdown_and_the_outage_stay_in_the_log(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    from imchat.client.session import Backoff

    alice.session.backoff = Backoff(base=0.05, cap=0.1)
    async with running(alice) as pilot:
        port = server.port
        await server.stop()
        await until(pilot, lambda: has_line(alice, LOBBY, "disconnected: shutting_down"), "why")
        line = next(x for x in log_text(alice, LOBBY) if "shutting_down" in x)
        assert line.startswith("12:34")
        # Connection refused while it is down: the bar still says why it went.
        await until(pilot, lambda: "then cannot connect" in status(alice), "retried")
        assert "shutting_down" in status(alice)
        assert sum("disconnected" in x for x in log_text(alice, LOBBY)) == 1
        await server.start(port=port)
        await until(pilot, lambda: has_line(alice, LOBBY, "reconnected after"), "back")
        # One line for the return, not a second for the room's rejoin as well.
        assert sum("reconnected" in x for x in log_text(alice, LOBBY)) == 1
        joined = [x for x in log_text(alice, LOBBY) if "You joined" in x]
        assert joined and joined[0].startswith("12:34")


def status(app: ChatApp) -> str:
    return str(app.query_one("#status").render())


async def test_presence_storms_fold_into_one_line(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        before = len(log(alice).entries)
        conns = []
        for n in range(30):
            conn = await Connection.connect("127.0.0.1", server.port)
            await conn.hello(f"user{n}")
            await conn.request("join", room="lobby")
            conns.append(conn)
        await until(pilot, lambda: has_line(alice, LOBBY, "30 joined #lobby"), "folded joins")
        for conn in conns[:12]:
            await conn.close()
        await until(pilot, lambda: has_line(alice, LOBBY, "18 joined, 12 joined and left"), "x")
        assert len(log(alice).entries) == before + 1
        for conn in conns[12:]:
            await conn.close()


async def test_a_one_shot_send_shows_as_just_its_message(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "hello")
        await until(pilot, lambda: has_line(alice, LOBBY, "hello"), "own line")
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello("deploybot")
        await conn.request("join", room="lobby")
        await conn.request("say", room="lobby", text="deployed v1.2")
        await conn.request("part", room="lobby")
        await conn.close()
        await until(pilot, lambda: has_line(alice, LOBBY, "deployed v1.2"), "message")
        await until(pilot, lambda: not has_line(alice, LOBBY, "deploybot joined"), "folded")
        assert not has_line(alice, LOBBY, "deploybot left")
        assert has_line(alice, LOBBY, "deployed v1.2")


async def test_control_characters_in_a_paste_show_and_send_as_pictures(
    server: ServerHandle,
) -> None:
    """A paste may hold control characters (BEL, a form feed, ESC from coloured output):
    invisible in the input, they made Enter fail with bad_text. They show as the Control
    Pictures the log uses (tabs and newlines stay), and what is shown is what is sent."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        paste(alice, "bell\x07 ff\x0c esc\x1b[0m tab\tend\x7f nel\x85")
        shown = "bell\u2407 ff\u240c esc\u241b[0m tab\tend\u2421 nel\\u0085"
        await until(pilot, lambda: chat_input(alice).value == shown, "pasted")
        await pilot.press("enter")
        await settle(pilot, texts, 1)
        assert texts == [shown]
