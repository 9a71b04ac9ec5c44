"""Snapshot tests of the main screen (pytest-textual-snapshot).

The app talks to the in-memory fake server with a deterministic clock, so every timestamp
and seq is the same on every run; timestamps are formatted in UTC; the cursor does not blink.
Update the references with ``pytest tests/tui --snapshot-update`` after an intended change.
"""

from __future__ import annotations

import time
from typing import Any

from client.fake_server import FakeConnection, FakeServer
from textual.pilot import Pilot

from imchat.client.session import Backoff, ChatSession, ConvKey, State
from imchat.tui.app import ChatApp
from imchat.tui.widgets import StatusBar

from .conftest import SIZE, until

LOBBY = ConvKey.room("lobby")


def utc_time(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def utc_date(ts: float) -> str:
    return time.strftime("%a %d %b %Y", time.gmtime(ts))


#: "Now" for the screens: just after the fake server's first timestamps.
NOW = 1_700_000_000.0


def build(server: FakeServer, nick: str = "alice") -> ChatApp:
    session = ChatSession(
        nick,
        connector=server.connect,
        rooms=["lobby"],
        ping_interval=3600,
        backoff=Backoff(base=30, cap=30),
        rng=lambda: 1.0,
    )
    return ChatApp(
        session,
        server_label="chat.example.org:7667",
        time_format=utc_time,
        date_format=utc_date,
        clock=lambda: NOW,
    )


async def user(server: FakeServer, nick: str, *rooms: str) -> FakeConnection:
    conn = await server.connect()
    await conn.hello(nick)
    for room in rooms:
        await conn.request("join", room=room)
    return conn


async def lively(pilot: Pilot[Any], server: FakeServer) -> None:
    """A small, busy afternoon: several users, a topic, an action, a mention, a DM."""
    app: Any = pilot.app
    await until(pilot, lambda: app.session.state is State.CONNECTED, "connected")
    bob = await user(server, "bob", "lobby", "dev")
    carol = await user(server, "carol", "lobby")
    dave = await user(server, "dave", "lobby")
    await bob.request("topic", room="lobby", text="Release day! Notes: [docs/release.md]")
    await bob.request("say", room="lobby", text="morning all")
    await carol.request("say", room="lobby", text="hi bob! coffee first")
    await dave.request("say", room="lobby", kind="action", text="waves from the train")
    await bob.request(
        "say",
        room="lobby",
        text="alice: can you look at the failing snapshot test before lunch? "
        "It wraps onto a second line when the window is narrow.",
    )
    await dave.request("part", room="lobby")
    await carol.request("dm", to="alice", text="psst: cake in the kitchen")
    await bob.request("say", room="dev", text="[bold red]not markup[/bold red]")
    await until(pilot, lambda: ConvKey.dm("carol") in app.views, "DM arrived")
    await until(pilot, lambda: len(app.views[LOBBY].log_widget.entries) >= 8, "lobby filled")
    await pilot.pause()


def main_screen(snap_compare: Any, size: tuple[int, int]) -> bool:
    server = FakeServer()
    app = build(server)

    async def run_before(pilot: Pilot[Any]) -> None:
        await lively(pilot, server)
        await pilot.press(*"sounds good")
        app.clear_notifications()
        await pilot.pause()

    return bool(snap_compare(app, terminal_size=size, run_before=run_before))


def test_main_screen(snap_compare: Any) -> None:
    assert main_screen(snap_compare, SIZE)


def test_main_screen_80x24(snap_compare: Any) -> None:
    """Side panes collapsed (F2 / F3 in the footer); the text keeps a sane width."""
    assert main_screen(snap_compare, (80, 24))


def test_main_screen_160x45(snap_compare: Any) -> None:
    assert main_screen(snap_compare, (160, 45))


def test_scrolled_up_with_new_messages_40x15(snap_compare: Any) -> None:
    """Only the conversation and the input; "N new ↓" while the user reads older lines."""
    server = FakeServer()
    app = build(server)

    async def run_before(pilot: Pilot[Any]) -> None:
        await lively(pilot, server)
        bob = await user(server, "erin", "lobby")
        for n in range(12):
            await bob.request("say", room="lobby", text=f"line {n}")
        await until(pilot, lambda: "line 11" in app.views[LOBBY].log_widget.plain_lines()[-1], "x")
        await pilot.press("pageup")
        for n in range(3):
            await bob.request("say", room="lobby", text=f"new {n}")
        await until(pilot, lambda: app.views[LOBBY].log_widget.unseen == 3, "3 new")
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(40, 15), run_before=run_before)


def test_offline_with_pending_messages(snap_compare: Any) -> None:
    server = FakeServer()
    app = build(server)

    async def run_before(pilot: Pilot[Any]) -> None:
        await lively(pilot, server)
        server.down = True
        server.drop_all()
        await until(pilot, lambda: app.session.retry_at is not None, "reconnecting")
        status = app.query_one(StatusBar)
        retry_at = app.session.retry_at
        status.clock = lambda: retry_at - 29.5  # always "in 30s", however slow the machine
        status.refresh_text()
        app.handle_line("are you still there?")
        app.handle_line("/me is on a train")
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
