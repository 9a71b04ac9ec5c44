"""DM conversations show every message meant for the user, visibly (Pilot, real server).

A conversation opened by a live DM brings its earlier history along (no PageUp needed); a
new session lists the DM conversations the server's read markers name (another session of
the user may have drained their queued DMs), and a ``marker`` event for a DM stream not
listed yet adds it. Tests wait on conditions, never on sleeps.
"""

from __future__ import annotations

import pytest

from imchat.client import Connection
from imchat.client.session import ChatSession, ConvKey
from imchat.tui.app import ChatApp
from imchat.tui.widgets import ConversationList

from .conftest import FAST, ServerHandle, fixed_time, has_line, running, until
from .test_app import client

LOBBY = ConvKey.room("lobby")
BOB = ConvKey.dm("Bob")


def admin_app(server: ServerHandle, rooms: tuple[str, ...] = ("lobby",)) -> ChatApp:
    session = ChatSession(
        "admin", "127.0.0.1", server.port, token=server.admin_token, backoff=FAST, rooms=rooms
    )
    return ChatApp(session, time_format=fixed_time, cursor_blink=False)


async def admin_elsewhere(server: ServerHandle) -> Connection:
    """Another session of the admin account (a phone), on a plain connection."""
    conn = await Connection.connect("127.0.0.1", server.port)
    await conn.hello("admin", token=server.admin_token)
    return conn


def said(app: ChatApp, key: ConvKey) -> list[str]:
    """The messages of ``key``'s log, oldest first (notices and decorations left out)."""
    view = app.views.get(key)
    if view is None:
        return []
    return [e.body.plain for e in view.log_widget.entries if e.meta.get("seq") is not None]


def titles(app: ChatApp) -> list[str]:
    return [s.title for s in app.query_one(ConversationList).items]


@pytest.mark.parametrize("queued", [False, True], ids=["live", "queued"])
async def test_a_dm_that_opens_a_conversation_brings_its_history(
    server: ServerHandle, queued: bool
) -> None:
    """Two DMs read on another session earlier, then a third: the conversation it opens
    shows all three, in order, once each, following the bottom; no PageUp needed. Queued:
    the third was sent while the admin was offline and arrives after the welcome."""
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        phone = await admin_elsewhere(server)
        await bob.request("dm", to="admin", text="old one")
        await bob.request("dm", to="admin", text="old two")
        await phone.close()
        app = admin_app(server)
        if queued:
            await bob.request("dm", to="admin", text="new three")
        async with running(app) as pilot:
            if not queued:
                await until(pilot, lambda: app.current == LOBBY, "in the lobby")
                await bob.request("dm", to="admin", text="new three")
            await until(pilot, lambda: has_line(app, BOB, "new three"), "the new DM")
            await until(pilot, lambda: len(said(app, BOB)) >= 3, "the earlier DMs, unasked")
            assert said(app, BOB) == ["old one", "old two", "new three"]
            assert has_line(app, BOB, "the beginning of Bob")
            log = app.views[BOB].log_widget
            assert log.following
            if not queued:  # (a queued DM may come first, and open on screen)
                entry = app.query_one(ConversationList).get(BOB)
                assert entry is not None and entry.unread == 1  # history is not news
            app.current = BOB
            await until(pilot, lambda: app.current == BOB, "looking at the DM")
            await until(pilot, lambda: app.chat_features.markers.get(BOB) == 3, "marked read")
            assert said(app, BOB) == ["old one", "old two", "new three"]


async def test_a_new_session_lists_the_dms_its_markers_name(server: ServerHandle) -> None:
    """The phone drained the queued DMs from Bob and read the first: a new session lists
    the conversation (named as Bob spells it) from the server's markers, with one unread;
    opening it shows both, with the "new since" line under what was read."""
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        await bob.request("dm", to="admin", text="while you were out")
        await bob.request("dm", to="admin", text="and this too")
        phone = await admin_elsewhere(server)
        await until_queued_drained(phone, 2)
        await phone.request("mark", **{"with": "Bob"}, seq=1)
        await phone.close()
        app = admin_app(server)
        async with running(app) as pilot:
            await until(pilot, lambda: "Bob" in titles(app), "the DM listed from the markers")
            assert titles(app) == ["#lobby", "Bob"]
            assert app.current == LOBBY
            sidebar = app.query_one(ConversationList)
            await until(
                pilot,
                lambda: (s := sidebar.get(BOB)) is not None and s.unread == 1,
                "one unread DM counted from the history after the marker",
            )
            await until(  # the hotlist follows the sidebar's count (a message later)
                pilot, lambda: "2:@Bob(1)!" in str(app.query_one("#status").render()), "hotlist"
            )
            await pilot.press("alt+2")
            await until(pilot, lambda: app.current == BOB, "looking at the DM")
            await until(pilot, lambda: len(said(app, BOB)) == 2, "its history, on opening")
            assert said(app, BOB) == ["while you were out", "and this too"]
            rows = [
                "MARKER" if e.meta.get("read_marker") else e.body.plain
                for e in app.views[BOB].log_widget.entries
                if e.meta.get("read_marker") or e.meta.get("seq") is not None
            ]
            assert rows == ["while you were out", "MARKER", "and this too"]
            await until(pilot, lambda: app.chat_features.markers.get(BOB) == 2, "marked read")


async def test_a_marker_event_for_an_unlisted_dm_adds_it(server: ServerHandle) -> None:
    """The phone drained a queued DM before this session started and reads it now: the
    marker event lists the conversation here too, and opening it shows the DM. A DM closed
    here stays closed when the phone reads it."""
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        app = admin_app(server)
        async with running(app) as pilot:
            await until(pilot, lambda: app.chat_features.restored, "markers restored")
            # Bob's DM reaches this session too; it is closed here (as /close does, without
            # looking at it first, which would mark it read here).
            await bob.request("dm", to="admin", text="first")
            await until(pilot, lambda: has_line(app, BOB, "first"), "DM")
            app.close_conversation(BOB)
            await until(pilot, lambda: "Bob" not in titles(app), "closed")
            phone = await admin_elsewhere(server)
            await phone.request("mark", **{"with": "Bob"}, seq=1)
            await until(pilot, lambda: app.chat_features.markers.get(BOB) == 1, "marker event")
            assert "Bob" not in titles(app)
            await phone.close()
        # A DM stream this session never saw: Carol's DM was queued and the phone got it.
        async with client(server, "Carol", rooms=("lobby",)) as carol:
            await carol.request("dm", to="admin", text="queued for you")
            carol_dm = ConvKey.dm("Carol")
            phone = await admin_elsewhere(server)
            await until_queued_drained(phone, 1)
            app = admin_app(server)
            async with running(app) as pilot:
                await until(pilot, lambda: app.chat_features.restored, "markers restored")
                assert "Carol" not in titles(app)
                await phone.request("mark", **{"with": "Carol"}, seq=1)
                await until(pilot, lambda: "Carol" in titles(app), "listed from the marker")
                await pilot.press(f"alt+{titles(app).index('Carol') + 1}")
                await until(pilot, lambda: app.current == carol_dm, "looking at it")
                await until(pilot, lambda: said(app, carol_dm) == ["queued for you"], "shown")
            await phone.close()


async def until_queued_drained(conn: Connection, count: int) -> None:
    """Read the ``count`` queued DMs the server sends after the welcome."""
    got = 0
    while got < count:
        event = await conn.next_event(timeout=10)
        if event.get("type") == "dm":
            got += 1


async def test_announcements_opened_by_a_live_one_show_the_earlier_ones_once(
    server: ServerHandle,
) -> None:
    """The session learns where the announcements stand at connect (their last seq) without
    loading them; the first live one opens the conversation. Its earlier announcements come
    above it, and PageUp then shows none of them twice (it asked for the newest page and
    prepended the live one again)."""
    from imchat.client.session import ANNOUNCEMENTS

    from .conftest import make_app

    async with client(server, "admin", token=server.admin_token) as admin:
        for text in ("one", "two"):
            await admin.request("announce", text=text)
        alice = make_app(server, "alice")
        async with running(alice) as pilot:
            await until(pilot, lambda: alice.current == LOBBY, "in the lobby")
            await admin.request("announce", text="three")
            await until(pilot, lambda: has_line(alice, ANNOUNCEMENTS, "three"), "live")
            alice.current = ANNOUNCEMENTS
            await pilot.press("pageup")
            await until(
                pilot,
                lambda: has_line(alice, ANNOUNCEMENTS, "the beginning of"),
                "the beginning",
            )
            assert said(alice, ANNOUNCEMENTS) == ["admin: one", "admin: two", "admin: three"]


async def test_read_markers_start_again_after_a_new_store_epoch(server: ServerHandle) -> None:
    """A new store (another ``epoch``) voids every seq the client remembers, its read
    markers too: a DM read after it is marked on the server (so a new session lists it),
    although its seq is below the marker the old store had."""
    import shutil

    from .conftest import make_app

    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        async with client(server, "Bob", rooms=("lobby",)) as bob:
            for n in range(3):
                await bob.request("dm", to="alice", text=f"old {n}")
            await until(pilot, lambda: has_line(alice, BOB, "old 2"), "the DMs")
            alice.current = BOB
            await until(pilot, lambda: alice.chat_features.markers.get(BOB) == 3, "read")
        port = server.port
        await server.stop()
        shutil.rmtree(server.data_dir)
        server.data_dir.mkdir()
        await server.start(port=port)
        async with client(server, "Bob", rooms=("lobby",)) as bob:
            await until(pilot, lambda: has_line(alice, BOB, "history was reset"), "new epoch")
            await until(pilot, lambda: alice.session.state.value == "connected", "back")
            await bob.request("dm", to="alice", text="fresh")
            await until(pilot, lambda: has_line(alice, BOB, "fresh"), "the new DM")
            await until(pilot, lambda: alice.chat_features.markers.get(BOB) == 1, "marked")


async def test_a_dm_delivered_before_a_restart_but_never_read_is_listed_after_it(
    server: ServerHandle,
) -> None:
    """Bob's DM reaches the TUI while the user looks at the lobby; the user quits without
    opening it, so no read marker names the stream, and the server's queue no longer holds
    it. The next start lists the conversation anyway (remembered on disk), with the DM
    counted unread, and opening it shows the message."""
    async with client(server, "Bob", rooms=("lobby",)) as bob:
        app = admin_app(server)
        async with running(app) as pilot:
            await until(pilot, lambda: app.chat_features.restored, "markers restored")
            await bob.request("dm", to="admin", text="did you see this?")
            await until(pilot, lambda: has_line(app, BOB, "did you see this?"), "the DM")
            assert app.current == LOBBY
        assert BOB not in app.chat_features.markers  # never read: no marker to list it by
        app = admin_app(server)
        async with running(app) as pilot:
            await until(pilot, lambda: app.chat_features.restored, "markers restored")
            await until(pilot, lambda: "Bob" in titles(app), "the DM conversation listed")
            sidebar = app.query_one(ConversationList)
            await until(
                pilot,
                lambda: (s := sidebar.get(BOB)) is not None and s.unread == 1 and s.attention,
                "the DM counted unread",
            )
            assert app.current == LOBBY
            await pilot.press(f"alt+{titles(app).index('Bob') + 1}")
            await until(pilot, lambda: app.current == BOB, "looking at the DM")
            assert said(app, BOB) == ["did you see this?"]
            await until(pilot, lambda: app.chat_features.markers.get(BOB) == 1, "marked read")
