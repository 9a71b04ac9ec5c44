"""Pilot tests of what daily use needs: notifications, hotlist, palette, screenshot, /close,
numbers past 9, search, the read marker, links, and the small command fixes.

Against a real in-process server (tests/tui/conftest.py); waits on conditions, never sleeps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from textual.command import CommandPalette
from textual.widgets import OptionList

from imchat.client.session import ConvKey
from imchat.tui.app import ChatApp
from imchat.tui.config import TuiConfig
from imchat.tui.notify import NotifySettings
from imchat.tui.widgets import ChatInput, ConversationList, SearchBar, StatusBar

from .conftest import ServerHandle, has_line, log_text, make_app, running, type_line, until
from .test_app import client

LOBBY = ConvKey.room("lobby")
DEV = ConvKey.room("dev")


def sidebar_titles(app: ChatApp) -> list[str]:
    return [s.title for s in app.query_one(ConversationList).items]


def capture(app: ChatApp) -> list[str]:
    """What the app writes to the terminal itself (bell, OSC sequences, title)."""
    out: list[str] = []
    app.notifier.write = out.append
    return out


async def test_mention_and_dm_notify_unless_looking_and_show_in_hotlist(
    server: ServerHandle,
) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        out = capture(alice)
        async with client(server, "bob", rooms=("lobby", "dev")) as bob:
            await type_line(pilot, "/join dev")
            await until(pilot, lambda: alice.current == DEV, "in #dev")
            # Looking at #dev: a mention there makes no noise.
            await bob.request("say", room="dev", text="alice: here?")
            await until(pilot, lambda: has_line(alice, DEV, "here?"), "seen in #dev")
            assert not any("\x07" in o for o in out)
            # A mention in #lobby (not in front): bell + OSC 777, with hostile text defused.
            await bob.request("say", room="lobby", text="alice;\u202e;2;pwned look")
            await until(pilot, lambda: any("\x07" in o for o in out), "bell")
            note = next(o for o in out if "\x07" in o)
            # No ";" from the sender: it cannot forge the fields of OSC 777.
            assert note == "\x07\x1b]777;notify;imchat: bob (#lobby);alice 2 pwned look\x1b\\"
            # A plain message is counted but is not a notification.
            await bob.request("say", room="lobby", text="just chatting")
            await until(pilot, lambda: has_line(alice, LOBBY, "just chatting"), "plain line")
            bells = sum("\x07" in o for o in out)
            assert bells == 1
            # A DM notifies too; the hotlist lists both, marked (those wanting attention first).
            await bob.request("dm", to="alice", text="psst")
            await until(pilot, lambda: sum("\x07" in o for o in out) == 2, "DM bell")
            await until(pilot, lambda: "@bob" in alice.query_one(StatusBar).hotlist.plain, "hot")
            assert alice.query_one(StatusBar).hotlist.plain == "act: 1:#lobby(2)! 3:@bob(1)!"
            status = str(alice.query_one(StatusBar).render())
            assert "act: 1:#lobby(2)! 3:@bob(1)!" in status
            titles = [o for o in out if o.startswith("\x1b]2;")]
            assert titles[-1] == f"\x1b]2;(3!) imchat alice @ 127.0.0.1:{server.port}\x1b\\"
            # Reading them clears the hotlist and the title.
            await pilot.press("alt+3")
            await pilot.press("alt+1")
            await until(pilot, lambda: not alice.query_one(StatusBar).hotlist.plain, "cleared")
            assert out[-1] == f"\x1b]2;imchat alice @ 127.0.0.1:{server.port}\x1b\\"


async def test_a_narrow_status_bar_keeps_the_state_and_the_hotlist(
    server: ServerHandle,
) -> None:
    # At 40 columns the side panes are folded away: the top bar is the only sign of a DM
    # arriving in another conversation, so it drops the server address before the hotlist.
    alice = make_app(server, "alice")
    async with running(alice, size=(40, 20)) as pilot:
        bar = alice.query_one(StatusBar)
        await until(pilot, lambda: "connected" in str(bar.render()), "state shown")
        async with client(server, "bob") as bob:
            await bob.request("dm", to="alice", text="psst")
            await until(pilot, lambda: "@bob" in bar.hotlist.plain, "hot")
            await pilot.pause()
            shown = str(bar.render())
            assert "act: 2:@bob(1)!" in shown
            assert "●" in shown and "alice" in shown
            assert len(shown) <= 40


async def test_notification_kinds_can_be_switched_off(server: ServerHandle) -> None:
    config = TuiConfig(notify=NotifySettings(dm=False, bell=False, desktop="osc9"))
    alice = make_app(server, "alice", config=config)
    async with running(alice) as pilot:
        out = capture(alice)
        await type_line(pilot, "/join dev")
        await until(pilot, lambda: alice.current == DEV, "in #dev")
        async with client(server, "bob", rooms=("lobby",)) as bob:
            await bob.request("dm", to="alice", text="dm, quiet")
            await bob.request("say", room="lobby", text="alice: loud")
            await until(pilot, lambda: any("\x1b]9;" in o for o in out), "OSC 9")
        assert [o for o in out if "\x1b]9;" in o] == [
            "\x1b]9;imchat: bob (#lobby): alice: loud\x1b\\"
        ]
        assert not any("\x07" in o or "777" in o for o in out)


async def test_palette_lists_conversations_and_switches(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "/join dev")
        await until(pilot, lambda: alice.current == DEV, "in #dev")
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(alice.screen, CommandPalette), "palette open")
        await pilot.press(*"go to lob")
        palette: Any = alice.screen

        def hits() -> list[str]:
            return [str(o.prompt) for o in palette.query_one(OptionList).options]

        await until(pilot, lambda: any("go to 1: #lobby" in h for h in hits()), "lobby listed")
        await pilot.press("enter")
        await until(pilot, lambda: alice.current == LOBBY, "switched to the lobby")


async def test_palette_screenshot_saves_an_svg_and_says_where(
    server: ServerHandle, tmp_path: Path
) -> None:
    shots = tmp_path / "shots" / "deeper"
    alice = make_app(server, "alice", config=TuiConfig(screenshot_dir=shots))
    async with running(alice) as pilot:
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(alice.screen, CommandPalette), "palette open")
        await pilot.press(*"Screenshot")
        palette: Any = alice.screen
        await until(
            pilot,
            lambda: any(
                "Screenshot" in str(o.prompt) for o in palette.query_one(OptionList).options
            ),
            "listed",
        )
        await pilot.press("enter")
        await until(pilot, lambda: alice.last_screenshot is not None, "saved")
        assert alice.last_screenshot is not None
        assert alice.last_screenshot.parent == shots
        assert alice.last_screenshot.read_text().startswith("<svg")
        assert has_line(alice, LOBBY, f"screenshot saved: {alice.last_screenshot}")


async def test_close_a_dm_and_get_it_back_as_it_was(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    dm = ConvKey.dm("bob")
    async with running(alice) as pilot, client(server, "bob") as bob:
        await bob.request("dm", to="alice", text="first")
        await until(pilot, lambda: has_line(alice, dm, "first"), "DM")
        await pilot.press("alt+2")
        assert alice.current == dm
        await type_line(pilot, "/close")
        await until(pilot, lambda: "bob" not in sidebar_titles(alice), "DM closed")
        assert alice.current == LOBBY
        await bob.request("dm", to="alice", text="second")
        await until(pilot, lambda: "bob" in sidebar_titles(alice), "DM back")
        said = [x.rsplit("bob ", 1)[-1] for x in log_text(alice, dm) if "───" not in x]
        assert said == ["first", "second"]  # the day's separator line aside
        # /close in a room leaves it.
        await type_line(pilot, "/join dev")
        await until(pilot, lambda: alice.current == DEV, "in #dev")
        await type_line(pilot, "/close")
        await until(pilot, lambda: "dev" not in alice.session.rooms, "parted")
        assert "#dev" not in sidebar_titles(alice)


async def test_conversations_past_nine_are_reachable(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        for n in range(2, 13):
            await type_line(pilot, f"/join r{n}")
            await until(pilot, lambda n=n: alice.current == ConvKey.room(f"r{n}"), f"r{n}")
        assert len(sidebar_titles(alice)) == 12
        await pilot.press("alt+0")
        assert alice.current == ConvKey.room("r10")
        await type_line(pilot, "/goto 12")
        assert alice.current == ConvKey.room("r12")
        await type_line(pilot, "/window 11")
        assert alice.current == ConvKey.room("r11")
        await type_line(pilot, "/goto 13")
        assert alice.current == ConvKey.room("r11")
        assert has_line(alice, ConvKey.room("r11"), "usage: /goto N, N from 1 to 12")
        # The list shows every number, 10 and up too.
        prompts = [str(o.prompt) for o in alice.query_one(ConversationList).options]
        assert prompts[11].startswith("12 #r12")


async def test_shift_tab_keeps_the_focus_in_the_input(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with (
        running(alice) as pilot,
        client(server, "bob", rooms=("lobby",)),
        client(server, "bill", rooms=("lobby",)),
    ):
        if True:
            await until(pilot, lambda: {"bob", "bill"} <= set(alice.nick_candidates()), "nicks")
            chat_input = alice.query_one(ChatInput)
            await pilot.press("shift+tab")
            assert alice.focused is chat_input
            await pilot.press("b", "shift+tab")
            assert chat_input.value == "bob: "  # backwards from the end: bill, bob
            await pilot.press("shift+tab")
            assert chat_input.value == "bill: "
            assert alice.focused is chat_input


async def test_topic_help_and_topic_commands(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "/help")
        await until(pilot, lambda: has_line(alice, LOBBY, "/topic [TEXT|-]"), "help")
        assert has_line(alice, LOBBY, "- clears it")
        await type_line(pilot, "/topic release day")
        await until(pilot, lambda: alice.session.rooms["lobby"].topic == "release day", "set")
        await type_line(pilot, "/topic")
        await until(pilot, lambda: has_line(alice, LOBBY, "topic of #lobby: release day"), "show")
        await type_line(pilot, "/topic -")
        await until(pilot, lambda: alice.session.rooms["lobby"].topic == "", "cleared")


async def test_join_refuses_a_bad_room_name(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "/join Bad Room!")
        await until(pilot, lambda: has_line(alice, LOBBY, "not a room name: 'Bad Room!'"), "error")
        await type_line(pilot, "/join #Good.Room")
        await until(pilot, lambda: alice.current == ConvKey.room("good.room"), "good joined")
        assert "bad" not in alice.session.rooms


async def test_search_finds_highlights_steps_and_closes(server: ServerHandle) -> None:
    await server.stop()
    await server.start(rate=0)
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby",)) as bob:
        for i in range(60):
            text = f"deploy {i} Needle" if i in (5, 30, 50) else f"filler line {i}"
            await bob.request("say", room="lobby", text=text)
        await until(pilot, lambda: has_line(alice, LOBBY, "filler line 59"), "all lines")
        log = alice.views[LOBBY].log_widget
        await pilot.press("ctrl+f")
        bar = alice.query_one(SearchBar)
        assert alice.focused is bar
        await pilot.press(*"needle deploy")
        lines = log_text(alice, LOBBY)

        def shown() -> str:
            index = next(i for i, e in enumerate(log.entries) if e.style == alice.search_style)
            return lines[index]

        await until(pilot, lambda: "deploy 50" in shown(), "newest hit")
        assert bar.border_title == "search: 1/3"
        first_row = log.scroll_y
        await pilot.press("enter")
        await until(pilot, lambda: "deploy 30" in shown(), "older hit")
        assert log.scroll_y < first_row  # it scrolled to the hit
        await pilot.press("up")
        await until(pilot, lambda: "deploy 5" in shown(), "oldest hit")
        row = next(i for i, e in enumerate(log.entries) if e.style == alice.search_style)
        top = log.scroll_y
        assert top <= log._starts[row] < top + log.size.height
        await pilot.press("down")
        await until(pilot, lambda: "deploy 30" in shown(), "newer again")
        await pilot.press("escape")
        assert not bar.display and alice.focused is alice.query_one(ChatInput)
        assert not any(e.style == alice.search_style for e in log.entries)
        # /search does the same from the input; no match says so.
        await type_line(pilot, "/search nothing-like-this")
        await until(pilot, lambda: "no match" in str(bar.border_title), "no match")
        # Switching away from a highlighted hit restores that line's own look.
        await pilot.press("escape")
        await type_line(pilot, "/search deploy 30")
        await until(pilot, lambda: "deploy 30" in shown(), "hit")
        await pilot.press("ctrl+n")  # to the next conversation (the DM opened below)
        alice.open_dm("bob")
        await until(pilot, lambda: alice.current == ConvKey.dm("bob"), "switched")
        assert not any(e.style == alice.search_style for e in log.entries)
        assert not bar.display


async def test_read_marker_shows_what_came_while_away_and_moves(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby",)) as bob:
        await bob.request("say", room="lobby", text="seen before")
        await until(pilot, lambda: has_line(alice, LOBBY, "seen before"), "first")
        await type_line(pilot, "/join dev")
        await until(pilot, lambda: alice.current == DEV, "in #dev")
        await bob.request("say", room="lobby", text="while away 1")
        await bob.request("say", room="lobby", text="while away 2")
        await until(pilot, lambda: has_line(alice, LOBBY, "while away 2"), "news")
        log = alice.views[LOBBY].log_widget

        def rows() -> list[str]:
            return [
                "MARKER" if e.meta.get("read_marker") else e.body.plain
                for e in log.entries
                if e.meta.get("read_marker") or e.meta.get("seq") is not None
            ]

        assert rows() == ["seen before", "MARKER", "while away 1", "while away 2"]
        await pilot.press("alt+1")
        await bob.request("say", room="lobby", text="while looking")
        await until(pilot, lambda: has_line(alice, LOBBY, "while looking"), "live")
        assert rows()[-2:] == ["while away 2", "while looking"]  # no new marker
        await pilot.press("alt+2")
        await bob.request("say", room="lobby", text="away again")
        await until(pilot, lambda: has_line(alice, LOBBY, "away again"), "news 2")
        assert rows() == [
            "seen before",
            "while away 1",
            "while away 2",
            "while looking",
            "MARKER",
            "away again",
        ]


async def test_a_new_conversation_has_no_marker_between_its_unread_messages(
    server: ServerHandle,
) -> None:
    """Two DMs open a conversation while alice looks elsewhere: both are unread (the list
    counts 2), so no "new since you left" line may sit between them as if the first had
    been seen."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby",)) as bob:
        await until(pilot, lambda: alice.current == LOBBY, "in the lobby")
        await bob.request("dm", to="alice", text="first")
        await bob.request("dm", to="alice", text="second")
        bob_dm = ConvKey.dm("bob")
        await until(pilot, lambda: has_line(alice, bob_dm, "second"), "both DMs")
        entry = alice.query_one(ConversationList).get(bob_dm)
        assert entry is not None and entry.unread == 2
        rows = [
            "MARKER" if e.meta.get("read_marker") else e.body.plain
            for e in alice.views[bob_dm].log_widget.entries
            if e.meta.get("read_marker") or e.meta.get("seq") is not None
        ]
        assert rows == ["first", "second"], rows  # and no line above them: all is new


async def test_urls_become_osc8_links_with_literal_text(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby",)) as bob:
        await bob.request(
            "say", room="lobby", text="see https://example.org/x?a=1 and javascript:alert(1)"
        )
        await until(pilot, lambda: has_line(alice, LOBBY, "example.org"), "message")
        await pilot.pause()
        log = alice.views[LOBBY].log_widget
        index = next(i for i, e in enumerate(log.entries) if "example.org" in e.body.plain)
        output = "".join(strip.render(alice.console) for strip in log._strips_for(index))
        opened = re.findall(r"\x1b\]8;id=[^;]*;([^\x1b]+)\x1b\\", output)
        assert set(opened) == {"https://example.org/x?a=1"}
        assert "javascript" in log.entries[index].body.plain
        plain = re.sub(r"\x1b\][^\x1b]*\x1b\\|\x1b\[[0-9;]*m", "", output)
        assert "see https://example.org/x?a=1 and javascript:alert(1)" in " ".join(plain.split())


def test_alt_zero_from_a_real_terminal_is_alt_0() -> None:
    from textual._xterm_parser import XTermParser

    from imchat.tui.app import enable_alt_digits

    enable_alt_digits()
    keys = [e.key for e in XTermParser().feed("\x1b0") if hasattr(e, "key")]
    assert keys == ["alt+0"]


def test_hotlist_orders_attention_first_and_keeps_names_short() -> None:
    from imchat.client.session import ANNOUNCEMENTS
    from imchat.tui.hotlist import hotlist, totals
    from imchat.tui.widgets.conversation_list import ConvStatus

    items = [
        ConvStatus(LOBBY, "#lobby", unread=2),
        ConvStatus(DEV, "#dev"),
        ConvStatus(ConvKey.dm("bob"), "bob", unread=1, attention=True),
        ConvStatus(ANNOUNCEMENTS, "announcements", unread=1),
    ]
    assert hotlist(items).plain == "act: 3:@bob(1)! 1:#lobby(2) 4:★(1)"
    assert totals(items) == (4, 1)
    assert hotlist(items[1:2]).plain == ""


async def test_a_long_outage_reason_goes_before_the_state_words() -> None:
    from textual.app import App, ComposeResult

    from imchat.client.session import State

    class Bar(App[None]):
        def compose(self) -> ComposeResult:
            yield StatusBar("chat.example.org:7667")

    async with Bar().run_test(size=(70, 3)) as pilot:
        bar = pilot.app.query_one(StatusBar)
        bar.nick, bar.state = "alice", State.RECONNECTING
        bar.reason = "connection lost; then [Errno 111] Connect call failed ('10.0.0.5', 7667)"
        await pilot.pause()
        line = bar.fitted(70).plain
        assert line == " imchat  alice @ chat.example.org:7667  ◌ reconnecting…"
        assert bar.fitted(200).plain.endswith(f"reconnecting…  ({bar.reason})")
        # With room for some of it, the reason is cut short rather than left out.
        assert bar.fitted(90).plain.endswith("◌ reconnecting…  (connection lost; then [Errno 1…)")
        assert len(bar.fitted(90).plain) == 90
