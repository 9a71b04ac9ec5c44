"""Functional tests: the TUI against a real in-process server, driven with Pilot."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rich.style import Style
from textual import events
from textual.command import CommandPalette
from textual.widgets import Input

from imchat.client import Connection
from imchat.client.resume import ResumeStore
from imchat.client.send import guest_hello
from imchat.client.session import ANNOUNCEMENTS, ConvKey, State
from imchat.tui.app import ChatApp
from imchat.tui.widgets import ChatInput, ConversationList, MemberList, MessageLog

from .conftest import SIZE, ServerHandle, has_line, log_text, make_app, running, type_line, until

LOBBY = ConvKey.room("lobby")


@contextlib.asynccontextmanager
async def client(
    server: ServerHandle,
    nick: str,
    *,
    token: str | None = None,
    rooms: tuple[str, ...] = (),
    elsewhere: bool = False,
) -> AsyncIterator[Connection]:
    """A plain library client, for the other side of a conversation (keeping its guest
    identity's resume as the library does, so it can come back under its nick)."""
    conn = await Connection.connect("127.0.0.1", server.port)
    # ``elsewhere``: another machine, which does not share this one's resume secrets.
    await guest_hello(conn, nick, None if elsewhere else ResumeStore(), token=token)
    for room in rooms:
        await conn.request("join", room=room)
    try:
        yield conn
    finally:
        await conn.close()


def members(app: ChatApp) -> list[str]:
    return list(app.query_one(MemberList).nicks)


def sidebar(app: ChatApp) -> list[tuple[str, int, bool]]:
    return [(s.title, s.unread, s.attention) for s in app.query_one(ConversationList).items]


async def test_two_clients_exchange_room_messages_and_dms(server: ServerHandle) -> None:
    alice, bob = make_app(server, "alice"), make_app(server, "bob")
    async with running(alice) as pa, running(bob) as pb:
        await until(pa, lambda: "bob" in members(alice), "bob in alice's member list")
        await type_line(pa, "hi bob, how are you?")
        await until(pb, lambda: has_line(bob, LOBBY, "hi bob, how are you?"), "room message")
        line = next(x for x in log_text(bob, LOBBY) if "how are you" in x)
        assert "alice" in line and "12:34" in line
        # bob opens a DM with /msg; alice sees a new, highlighted conversation.
        await type_line(pb, "/msg alice psst, a secret")
        dm_bob = ConvKey.dm("bob")
        await until(pa, lambda: has_line(alice, dm_bob, "psst, a secret"), "DM at alice")
        assert ("bob", 1, True) in sidebar(alice)
        assert bob.current == ConvKey.dm("alice")
        # alice switches to it with the keyboard (Alt+2) and answers there.
        await pa.press("alt+2")
        assert alice.current == dm_bob
        assert ("bob", 0, False) in sidebar(alice)
        await type_line(pa, "got it")
        await until(pb, lambda: has_line(bob, ConvKey.dm("alice"), "got it"), "DM reply")
        # The room message did not leak into the DM and vice versa.
        assert not has_line(bob, LOBBY, "got it")
        assert not has_line(alice, LOBBY, "psst")


async def test_join_and_part_update_the_member_list(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await until(pilot, lambda: members(alice) == ["alice"], "alone in the lobby")
        async with client(server, "bob", rooms=("lobby",)) as bob:
            await until(pilot, lambda: "bob" in members(alice), "bob joined")
            await until(pilot, lambda: has_line(alice, LOBBY, "bob joined #lobby"), "join line")
            await bob.request("part", room="lobby")
            await until(pilot, lambda: "bob" not in members(alice), "bob left")
            # Joined and left in a row: one folded line.
            await until(
                pilot, lambda: has_line(alice, LOBBY, "bob joined and left #lobby"), "folded"
            )
            assert not has_line(alice, LOBBY, "bob joined #lobby")
        # alice joins and parts a room herself.
        await type_line(pilot, "/join #Dev")
        dev = ConvKey.room("dev")
        await until(pilot, lambda: alice.current == dev, "switched to #dev")
        assert ("#dev", 0, False) in sidebar(alice)
        await type_line(pilot, "/part")
        await until(pilot, lambda: dev not in alice.views, "#dev closed")
        assert alice.current == LOBBY
        assert [t for t, _, _ in sidebar(alice)] == ["#lobby"]


async def test_an_announcement_is_unmistakable(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        async with client(server, "admin", token=server.admin_token) as admin:
            reply = await admin.request("announce", text="server maintenance at 18:00")
            assert reply["delivered"] >= 1
        await until(pilot, lambda: has_line(alice, ANNOUNCEMENTS, "maintenance"), "announcement")
        # It is also written into the conversation being read, and raised as a toast.
        assert any(
            "ANNOUNCEMENT" in x and "admin: server maintenance" in x for x in log_text(alice, LOBBY)
        )
        assert any("maintenance" in str(n.message) for n in alice._notifications)
        assert ("announcements", 1, False) in sidebar(alice)


async def test_server_restart_resumes_without_loss_or_duplicates(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    # Slow backoff so the test decides when alice returns: messages are sent while she is away.
    from imchat.client.session import Backoff

    alice.session.backoff = Backoff(base=30, cap=30)
    async with running(alice) as pilot:
        async with client(server, "bob", rooms=("lobby",)) as bob:
            await bob.request("say", room="lobby", text="before the restart")
            await bob.request("dm", to="alice", text="dm before")
            await until(
                pilot,
                lambda: (
                    has_line(alice, LOBBY, "before the restart")
                    and has_line(alice, ConvKey.dm("bob"), "dm before")
                ),
                "first",
            )
        port = server.port
        await server.stop()
        await until(
            pilot,
            lambda: "reconnecting in" in str(alice.query_one("#status").render()),
            "the status bar shows the countdown",
        )
        assert alice.session.state is State.RECONNECTING
        # Typed while disconnected: shown as pending.
        await type_line(pilot, "typed while offline")
        view = alice.views[LOBBY]
        await until(
            pilot,
            lambda: view.pending.display and "typed while offline" in str(view.pending.render()),
            "pending line",
        )
        await server.start(port=port)
        async with client(server, "bob", rooms=("lobby",)) as bob:
            for i in range(3):
                await bob.request("say", room="lobby", text=f"missed {i}")
            await bob.request("dm", to="alice", text="dm while away")
            alice.session.reconnect_now()
            await until(pilot, lambda: alice.session.state is State.CONNECTED, "reconnected")
            await until(
                pilot,
                lambda: has_line(alice, LOBBY, "typed while offline") and not alice.session.outbox,
                "pending sent",
            )
            await bob.request("say", room="lobby", text="after")
            await bob.request("dm", to="alice", text="dm after")
            await until(
                pilot,
                lambda: (
                    has_line(alice, LOBBY, "after")
                    and has_line(alice, ConvKey.dm("bob"), "dm after")
                ),
                "live after resume",
            )
        said = [
            x.split("alice ", 1)[-1].split("bob ", 1)[-1].strip()
            for x in log_text(alice, LOBBY)
            if x.startswith("12:34") and "--" not in x
        ]
        assert said == [
            "before the restart",
            "missed 0",
            "missed 1",
            "missed 2",
            "typed while offline",
            "after",
        ]
        dms = [
            x.rsplit("bob ", 1)[-1]
            for x in log_text(alice, ConvKey.dm("bob"))
            if x.startswith("12:34") and "--" not in x
        ]
        assert dms == ["dm before", "dm while away", "dm after"]
        await until(pilot, lambda: not view.pending.display, "pending line gone")
        assert sum("reconnected" in x for x in log_text(alice, LOBBY)) == 1


async def test_a_gap_history_cannot_fill_is_marked(server: ServerHandle) -> None:
    """More missed than one history reply holds (500): the newest are shown, with a marker."""
    from imchat.client.session import Backoff

    await server.stop()
    await server.start(rate=0)
    alice = make_app(server, "alice")
    alice.session.backoff = Backoff(base=30, cap=30)
    async with running(alice) as pilot:
        async with client(server, "bob", rooms=("lobby",)) as bob:
            await bob.request("say", room="lobby", text="seen it")
            await until(pilot, lambda: has_line(alice, LOBBY, "seen it"), "first message")
        port = server.port
        await server.stop()
        await until(pilot, lambda: alice.session.state is State.RECONNECTING, "reconnecting")
        await server.start(port=port, rate=0)
        async with client(server, "bob", rooms=("lobby",)) as bob:
            for i in range(1, 601):
                await bob.request("say", room="lobby", text=f"away {i}")
        alice.session.reconnect_now()
        await until(pilot, lambda: has_line(alice, LOBBY, "away 600"), "caught up")
        lines = log_text(alice, LOBBY)
        marker = next(i for i, x in enumerate(lines) if "messages missed here" in x)
        assert "100 messages missed here" in lines[marker]
        assert "seen it" in "".join(lines[:marker])
        assert lines[marker + 1].endswith("away 101")
        assert sum("away " in x for x in lines) == 500


async def test_hostile_text_is_shown_literally(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        async with client(server, "[red]eve", rooms=("lobby",)) as eve:
            await eve.request("say", room="lobby", text="[bold red]pwned[/bold red] :smile:")
            await until(pilot, lambda: has_line(alice, LOBBY, "pwned"), "markup message")
        # The server refuses control characters; a hostile server would not. Inject one.
        alice.session._on_event(
            {
                "type": "msg",
                "room": "lobby",
                "seq": 99,
                "ts": 1.0,
                "from": "mallory",
                "text": "\x1b[2J\x1b[31mred\rover\x07",
            }
        )
        await until(pilot, lambda: has_line(alice, LOBBY, "␍over"), "escape message")
        await pilot.pause()
        log = alice.views[LOBBY].log_widget
        rows = [log.render_line(y) for y in range(log.size.height)]
        screen = "\n".join(row.text for row in rows)
        assert "[red]eve" in screen
        assert "[bold red]pwned[/bold red] :smile:" in screen
        assert "␛[2J␛[31mred␍over␇" in screen
        assert "\x1b" not in screen and "\r" not in screen
        # And nothing was styled by the network: the body is in the log's plain text colour.
        red = Style.parse("red").color
        body = [seg for row in rows for seg in row if "pwned" in seg.text]
        assert body and all(
            seg.style
            and not seg.style.bold
            and seg.style.color != red
            and seg.style.color == log.rich_style.color
            for seg in body
        )
        nick = [seg for row in rows for seg in row if "[red]eve" in seg.text]
        assert nick and all(seg.style and seg.style.color != red for seg in nick)


async def test_unknown_commands_and_server_errors_are_explained(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await type_line(pilot, "/frobnicate now")
        await until(pilot, lambda: has_line(alice, LOBBY, "unknown command /frobnicate"), "unk")
        await type_line(pilot, "/part nowhere")
        await until(pilot, lambda: has_line(alice, LOBBY, "not_in_room"), "not_in_room")
        await type_line(pilot, "/msg nobody-here hello?")
        await until(
            pilot,
            lambda: has_line(alice, ConvKey.dm("nobody-here"), "no_such_user"),
            "no_such_user",
        )
        await pilot.press("ctrl+p")
        assert alice.current == LOBBY
        await type_line(pilot, "/topic Friday: [b]release[/b]")
        await until(
            pilot, lambda: has_line(alice, LOBBY, "set the topic: Friday: [b]release"), "topic line"
        )
        await until(
            pilot,
            lambda: "Friday: [b]release[/b]" in str(alice.query_one("#status").render()),
            "topic in status bar",
        )
        await type_line(pilot, "/help")
        await until(pilot, lambda: has_line(alice, LOBBY, "/msg NICK [TEXT]"), "help")
        await type_line(pilot, "/users")
        await until(pilot, lambda: has_line(alice, LOBBY, "online (1): alice"), "users")
        await type_line(pilot, "/rooms")
        await until(
            pilot, lambda: has_line(alice, LOBBY, "#lobby  1 members  Friday: [b]"), "rooms"
        )
        await type_line(pilot, "/me waves")
        await until(pilot, lambda: has_line(alice, LOBBY, "alice waves"), "action")
        await type_line(pilot, "/clear")
        await until(pilot, lambda: log_text(alice, LOBBY) == [], "cleared")


async def test_a_burst_beyond_the_rate_limit_is_paced_not_lost(server: ServerHandle) -> None:
    await server.stop()
    await server.start(rate=4, burst=1)
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        for i in range(4):
            alice.handle_line(f"burst {i}")
        await until(pilot, lambda: has_line(alice, LOBBY, "burst 3"), "all sent", timeout=20)
        lines = [line for line in log_text(alice, LOBBY) if "burst" in line]
        assert [line.split()[-1] for line in lines] == ["0", "1", "2", "3"]
        assert not has_line(alice, LOBBY, "rate_limited")


async def test_rate_limited_past_the_retries_is_reported(server: ServerHandle) -> None:
    await server.stop()
    await server.start(rate=0.01, burst=1)
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        alice.session.retry_delays = (0.01, 0.01)
        for i in range(2):
            alice.handle_line(f"flood {i}")
        await until(pilot, lambda: has_line(alice, LOBBY, "rate_limited"), "rate_limited shown")


async def test_tab_completion_and_input_recall(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "Bobby", rooms=("lobby",)):
        await until(pilot, lambda: "Bobby" in members(alice), "Bobby present")
        chat_input = alice.query_one("#input", ChatInput)
        await pilot.press("/", "j", "o", "tab")
        assert chat_input.value == "/join "
        chat_input.value = ""
        await pilot.press("b", "o", "tab")
        assert chat_input.value == "Bobby: "
        # Keys arriving in one burst (one read from the terminal) complete in order too.
        chat_input.value = ""
        for key, char in [("b", "b"), ("o", "o"), ("tab", "\t"), ("x", "x")]:
            alice.post_message(events.Key(key, char))
        await until(pilot, lambda: chat_input.value == "Bobby: x", "burst completed in order")
        chat_input.value = "Bobby: "
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: has_line(alice, LOBBY, "Bobby: hi"), "sent")
        await type_line(pilot, "second")
        await pilot.press("up")
        assert chat_input.value == "second"
        await pilot.press("up")
        assert chat_input.value == "Bobby: hi"
        await pilot.press("down", "down")
        assert chat_input.value == ""


async def test_scrolling_up_fetches_older_history(server: ServerHandle) -> None:
    await server.stop()
    await server.start(rate=0)
    async with client(server, "bob", rooms=("lobby",)) as bob:
        for i in range(1, 131):
            await bob.request("say", room="lobby", text=f"line {i}")
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await until(pilot, lambda: has_line(alice, LOBBY, "line 130"), "latest")
        assert not has_line(alice, LOBBY, "line 80 ") and has_line(alice, LOBBY, "line 81")
        log = alice.views[LOBBY].log_widget
        for _ in range(40):
            if has_line(alice, LOBBY, "the beginning of #lobby"):
                break
            await pilot.press("pageup")
            await pilot.pause(0.05)
        await until(pilot, lambda: has_line(alice, LOBBY, "the beginning of #lobby"), "top")
        texts = [x for x in log.plain_lines() if "line " in x]
        assert [int(x.rsplit(" ", 1)[1]) for x in texts] == list(range(1, 131))
        assert isinstance(log, MessageLog)


async def test_mouse_and_keyboard_navigation(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby", "dev")) as bob:
        await type_line(pilot, "/join dev")
        dev = ConvKey.room("dev")
        await until(pilot, lambda: alice.current == dev and "bob" in members(alice), "#dev")
        await pilot.press("ctrl+n")  # wraps around to the first
        assert alice.current == LOBBY
        await pilot.press("ctrl+p")
        assert alice.current == dev
        # An unread mention in the other room stands out.
        await bob.request("say", room="lobby", text="alice: look at this")
        await until(pilot, lambda: ("#lobby", 1, True) in sidebar(alice), "mention marked")
        # Clicking a member opens a DM with them.
        assert members(alice) == ["alice", "bob"]
        await pilot.click(MemberList, offset=(4, 2))
        await until(pilot, lambda: alice.current == ConvKey.dm("bob"), "DM via click")
        # Clicking the sidebar entry switches back.
        await pilot.click(ConversationList, offset=(4, 1))
        await until(pilot, lambda: alice.current == LOBBY, "lobby via click")
        assert ("#lobby", 0, False) in sidebar(alice)


async def test_command_palette_lists_the_commands(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(alice.screen, CommandPalette), "palette open")
        await pilot.press(*"join")
        palette: Any = alice.screen

        def hits() -> str:
            from textual.widgets import OptionList

            options = palette.query_one(OptionList)
            return " ".join(str(o.prompt) for o in options.options)

        await until(pilot, lambda: "/join ROOM" in hits(), "/join listed")
        await pilot.press("enter")
        await until(
            pilot, lambda: alice.query_one("#input", ChatInput).value == "/join ", "input prefilled"
        )


def test_alt_digit_sequences_reach_the_app_as_alt_keys() -> None:
    from textual._xterm_parser import XTermParser

    from imchat.tui.app import enable_alt_digits

    enable_alt_digits()
    keys = [e.key for e in XTermParser().feed("\x1b1\x1b9x") if hasattr(e, "key")]
    assert keys[:2] == ["alt+1", "alt+9"]


async def test_a_taken_nick_offers_to_pick_another(server: ServerHandle) -> None:
    """A nick in use at the first connect: the reason is shown and another nick asked for;
    Escape quits (exit code 1), a new nick connects."""
    from imchat.tui.screens import Ask

    async with client(server, "alice", elsewhere=True):
        alice = make_app(server, "alice")
        async with alice.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: isinstance(alice.screen, Ask), "asked for a nick")
            assert alice.failed and alice.session.state is State.OFFLINE
            assert "nick_taken" in str(alice.query_one("#status").render())
            assert "nick_taken" in alice.screen.question
            answer = alice.screen.query_one(Input)
            answer.value = ""
            await pilot.press(*"alice2", "enter")
            await until(pilot, lambda: alice.session.state is State.CONNECTED, "connected")
            assert not alice.failed and alice.session.nick == "alice2"
            await until(pilot, lambda: LOBBY in alice.views, "in the lobby")
            await type_line(pilot, "hello as alice2")
            await until(pilot, lambda: has_line(alice, LOBBY, "hello as alice2"), "said")
            await alice.session.close()
        alice = make_app(server, "alice")
        async with alice.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: isinstance(alice.screen, Ask), "asked again")
            await pilot.press("escape")
            await until(pilot, lambda: not alice.is_running, "quit")
        assert alice.failed


async def test_a_history_reset_is_one_line_in_the_conversation(server: ServerHandle) -> None:
    """Rev 2: a new store epoch (or a rewound room) is said once, where the user looks."""
    from imchat.client.session import HistoryReset

    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await until(pilot, lambda: LOBBY in alice.views, "lobby shown")
        alice.session._emit(HistoryReset(None))
        await until(pilot, lambda: has_line(alice, LOBBY, "history was reset"), "reset line")
        alice.session._emit(HistoryReset(LOBBY, 7))
        await until(pilot, lambda: has_line(alice, LOBBY, "reset to message 7"), "rewind line")
        lines = log_text(alice, LOBBY)
        assert sum("history was reset" in x for x in lines) == 1


async def test_a_topic_of_many_lines_is_one_line_in_listings(server: ServerHandle) -> None:
    """A topic may hold newlines (500 of them): the /rooms listing and the "You joined"
    notice give it one line, as the status bar does, so nobody's topic floods the window."""
    async with client(server, "mallory", rooms=("spam",)) as mallory:
        await mallory.request("topic", room="spam", text="top\n\n\n\n\n\nbottom")
        alice = make_app(server, "alice", room="spam")
        async with running(alice) as pilot:
            spam = ConvKey.room("spam")
            await until(pilot, lambda: has_line(alice, spam, "You joined #spam"), "joined")
            assert has_line(alice, spam, "You joined #spam  topic: top bottom")
            await type_line(pilot, "/rooms")
            await until(pilot, lambda: has_line(alice, spam, "#spam  2 members"), "rooms")
            assert has_line(alice, spam, "#spam  2 members  top bottom")


async def test_a_refusal_before_any_conversation_stays_on_screen(server: ServerHandle) -> None:
    """A first connection refused for good (a wrong password here; a plain connection to a
    TLS port the same) has no conversation to write its red line into: the toast was gone
    after 4 s, leaving an empty window and a status bar cut short. It stays up instead."""
    carol = make_app(server, "admin", password="not the password")
    async with carol.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: carol.failed, "refused")
        (toast,) = [n for n in carol._notifications if "disconnected" in str(n.message)]
        assert "auth_failed" in str(toast.message)
        assert toast.timeout >= 3600  # until the user quits, not 4 s
