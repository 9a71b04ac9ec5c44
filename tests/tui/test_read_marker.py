"""The "new since you left" line goes where it tells something: between messages already
read and the first new one, never above the first message of a conversation in which
everything shown is new (it would separate nothing from nothing). A DM that begins while
away: tests/tui/test_daily.py.

Pilot against a real in-process server; waits on conditions, never sleeps.
"""

from __future__ import annotations

from imchat.client import Connection
from imchat.client.session import ChatSession, ConvKey
from imchat.tui.app import ChatApp

from .conftest import FAST, ServerHandle, fixed_time, has_line, make_app, running, type_line, until
from .test_app import client

LOBBY = ConvKey.room("lobby")
DEV = ConvKey.room("dev")


def rows(app: ChatApp, key: ConvKey) -> list[str]:
    """The messages of ``key``'s log and where the read marker line sits among them."""
    return [
        "MARKER" if e.meta.get("read_marker") else e.body.plain
        for e in app.views[key].log_widget.entries
        if e.meta.get("read_marker") or e.meta.get("seq") is not None
    ]


async def test_no_line_above_a_room_whose_every_message_came_while_away(
    server: ServerHandle,
) -> None:
    """alice joined #dev (nothing said there yet) and looks at #lobby: the first messages of
    #dev are all new, so no line goes above them; once she has seen them and looks away, the
    next news gets its line below them."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby", "dev")) as bob:
        await type_line(pilot, "/join dev")
        await until(pilot, lambda: alice.current == DEV, "in #dev")
        await pilot.press("alt+1")
        await until(pilot, lambda: alice.current == LOBBY, "back in #lobby")
        await bob.request("say", room="dev", text="first ever")
        await bob.request("say", room="dev", text="second")
        await until(pilot, lambda: has_line(alice, DEV, "second"), "news in #dev")
        assert rows(alice, DEV) == ["first ever", "second"]
        await pilot.press("alt+2")
        await until(pilot, lambda: alice.current == DEV, "looking at #dev")
        await pilot.press("alt+1")
        await bob.request("say", room="dev", text="third")
        await until(pilot, lambda: has_line(alice, DEV, "third"), "more news")
        assert rows(alice, DEV) == ["first ever", "second", "MARKER", "third"]


async def _marked_then_news(server: ServerHandle, news: int) -> None:
    """The admin account has read message 1 of #lobby; ``news`` messages follow it."""
    async with client(server, "bob", rooms=("lobby",)) as bob:
        await bob.request("say", room="lobby", text="read already")
        admin = await Connection.connect("127.0.0.1", server.port)
        await admin.hello("admin", token=server.admin_token)
        await admin.request("join", room="lobby")
        await admin.request("mark", room="lobby", seq=1)
        await admin.close()
        for n in range(news):
            await bob.request("say", room="lobby", text=f"news {n + 2}")


def _admin_app(server: ServerHandle) -> ChatApp:
    session = ChatSession(
        "admin", "127.0.0.1", server.port, token=server.admin_token, backoff=FAST,
        rooms=["ops", "lobby"],
    )  # fmt: skip
    return ChatApp(session, time_format=fixed_time, cursor_blink=False)


async def test_server_marker_below_what_is_loaded_draws_no_line_until_older_loads(
    server: ServerHandle,
) -> None:
    """60 messages came after the admin's marker; the view opens on the latest 50, every one
    of them new. A line above the first of them would claim what is above it was read,
    though the 10 before it are new too: none is drawn. Scrolling up loads the rest, and
    the line then goes where the reading stopped, below "read already"."""
    await server.stop()
    await server.start(rate=0)
    await _marked_then_news(server, 60)
    app = _admin_app(server)
    async with running(app) as pilot:
        await until(pilot, lambda: has_line(app, LOBBY, "news 61"), "the latest history")
        await until(pilot, lambda: app.chat_features.markers.get(LOBBY) == 1, "the marker")
        app.current = LOBBY
        await pilot.pause()
        shown = rows(app, LOBBY)
        assert shown == [f"news {n}" for n in range(12, 62)], shown
        app.views[LOBBY].log_widget.request_older()
        await until(pilot, lambda: has_line(app, LOBBY, "read already"), "the older history")
        await pilot.pause()
        assert rows(app, LOBBY) == ["read already", "MARKER"] + [f"news {n}" for n in range(2, 62)]


async def test_server_marker_inside_what_is_loaded_still_draws_the_line(
    server: ServerHandle,
) -> None:
    await _marked_then_news(server, 2)
    app = _admin_app(server)
    async with running(app) as pilot:
        await until(pilot, lambda: has_line(app, LOBBY, "news 3"), "history")
        await until(pilot, lambda: app.chat_features.markers.get(LOBBY) == 1, "the marker")
        app.current = LOBBY
        await until(pilot, lambda: "MARKER" in rows(app, LOBBY), "the line")
        assert rows(app, LOBBY) == ["read already", "MARKER", "news 2", "news 3"]


def _lobby_app(server: ServerHandle) -> ChatApp:
    session = ChatSession(
        "admin", "127.0.0.1", server.port, token=server.admin_token, backoff=FAST,
        rooms=["lobby"],
    )  # fmt: skip
    return ChatApp(session, time_format=fixed_time, cursor_blink=False)


async def test_the_conversation_shown_first_gets_its_line_after_a_restart(
    server: ServerHandle,
) -> None:
    """The user reads #lobby up to message 2 and quits; two messages come; the user starts
    the client again and #lobby, the conversation it opens on, shows the line below message
    2. Its history arrived (and was marked read, being on screen) before the restored markers
    did, so the line never came and the news were marked read unseen."""
    async with client(server, "bob", rooms=("lobby",)) as bob:
        first = _lobby_app(server)
        async with running(first) as pilot:
            await until(pilot, lambda: first.current == LOBBY, "in #lobby")
            await bob.request("say", room="lobby", text="read 1")
            await bob.request("say", room="lobby", text="read 2")
            await until(pilot, lambda: has_line(first, LOBBY, "read 2"), "the messages")
            await until(pilot, lambda: first.chat_features.markers.get(LOBBY) == 2, "marked")
        await bob.request("say", room="lobby", text="news 3")
        await bob.request("say", room="lobby", text="news 4")
        again = _lobby_app(server)
        async with running(again) as pilot:
            await until(pilot, lambda: again.current == LOBBY, "back in #lobby")
            await until(pilot, lambda: has_line(again, LOBBY, "news 4"), "the history")
            await until(pilot, lambda: "MARKER" in rows(again, LOBBY), "the line")
            assert rows(again, LOBBY) == ["read 1", "read 2", "MARKER", "news 3", "news 4"]
            # Being on screen, the conversation is read to its end now.
            await until(pilot, lambda: again.chat_features.markers.get(LOBBY) == 4, "read")
