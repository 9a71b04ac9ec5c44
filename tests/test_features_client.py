"""The client library's revision 3 layer (imchat.client.features) against a real server:
edits/deletes/reactions folded into their targets, markers synced across two sessions of one
account and restored at connect, typing throttled on the client side, search."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import Clients, admin_token, join, next_event

from imchat.client.features import (
    Features,
    MarkerMoved,
    MarkersRestored,
    MessageBook,
    TypingNow,
)
from imchat.client.session import ChatSession, ConvKey, State

pytestmark = pytest.mark.server_config(rate=0)
LOBBY = ConvKey.room("lobby")


class Watch:
    """Wakes a test whenever the session or its features report anything."""

    def __init__(self, session: ChatSession, features: Features) -> None:
        self.changed = asyncio.Event()
        self.features_events: list[Any] = []
        session.add_listener(lambda _e: self.changed.set())
        features.add_listener(self._on)

    def _on(self, event: Any) -> None:
        self.features_events.append(event)
        self.changed.set()

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(
    server: Any, nick: str, **kwargs: Any
) -> AsyncIterator[tuple[ChatSession, Features, Watch]]:
    session = ChatSession(nick, port=server.port, rooms=("lobby",), **kwargs)
    features = Features(session)
    watch = Watch(session, features)
    task = asyncio.create_task(session.run())
    try:
        await watch.until(lambda: session.state is State.CONNECTED)
        yield session, features, watch
    finally:
        await session.close()
        await asyncio.wait_for(task, 5)


async def test_edits_deletes_reactions_fold_into_targets(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    async with running(server, "alice") as (_session, features, watch):
        said = await bob.request("say", room="lobby", text="helo")
        await watch.until(lambda: features.book.view(LOBBY, said["seq"]) is not None)
        await bob.request("edit", room="lobby", seq=said["seq"], text="hello")
        await features.toggle_reaction(LOBBY, said["seq"], "👍")
        await bob.request("react", room="lobby", seq=said["seq"], emoji="👍")
        view = features.book.view(LOBBY, said["seq"])
        assert view is not None
        await watch.until(lambda: view.reaction_counts() == [("👍", 2)])
        assert (view.text, view.edited) == ("hello", True)
        await features.toggle_reaction(LOBBY, said["seq"], "👍")  # mine again: taken back
        await watch.until(lambda: view.reaction_counts() == [("👍", 1)])
        other = await bob.request("say", room="lobby", text="bye")
        await bob.request("delete", room="lobby", seq=other["seq"])
        await watch.until(
            lambda: (v := features.book.view(LOBBY, other["seq"])) is not None and v.deleted
        )
        # a reply is queued with its reply_to and confirmed by the server
        features.reply(LOBBY, "welcome back", said["seq"])
        event = await next_event(bob, "msg", skip=frozenset({"online", "offline", "joined"}))
        while event.get("text") != "welcome back":
            event = await next_event(bob, "msg")
        assert event["reply_to"] == said["seq"]


def test_book_reports_no_change_for_plain_new_messages() -> None:
    # A UI redraws the entries of changed seqs: new messages are drawn as they are appended,
    # and reporting each of them made the TUI search its whole log once per message (a flood
    # of 2,000 lines took tens of seconds to show).
    book = MessageBook()
    assert book.add(LOBBY, [{"seq": n, "from": "a", "text": str(n)} for n in range(1, 4)]) == set()
    react = {"seq": 4, "from": "b", "kind": "react", "target": 2, "text": "x"}
    assert book.add(LOBBY, [react, {"seq": 5, "from": "a", "text": "later"}]) == {2}


def test_book_applies_changes_that_arrive_before_their_target() -> None:
    book = MessageBook()
    edit = {"seq": 3, "from": "a", "kind": "edit", "target": 1, "text": "new"}
    react = {"seq": 4, "from": "b", "kind": "react", "target": 1, "text": "x"}
    assert book.add(LOBBY, [edit, react]) == set()
    assert book.add(LOBBY, [{"seq": 1, "from": "a", "text": "old"}]) == {1}
    view = book.view(LOBBY, 1)
    assert view is not None and (view.text, view.edited, view.reaction_counts()) == (
        "new",
        True,
        [("x", 1)],
    )
    book.add(LOBBY, [{"seq": 5, "from": "a", "kind": "delete", "target": 1, "text": ""}])
    assert view.deleted and view.text == "" and view.reaction_counts() == []


async def test_markers_sync_between_two_sessions_of_one_account(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    token = admin_token(data_dir)
    bob = await connect("bob")
    await join(bob, "lobby")
    for text in ("one", "two", "three"):
        last = await bob.request("say", room="lobby", text=text)
    async with (
        running(server, "admin", token=token) as (_s1, phone, _phone_watch),
        running(server, "admin", token=token) as (_s2, laptop, laptop_watch),
    ):
        await laptop_watch.until(lambda: laptop.unread(LOBBY) == 3)
        await phone.mark(LOBBY, last["seq"])
        await laptop_watch.until(lambda: laptop.markers.get(LOBBY) == last["seq"])
        assert laptop.unread(LOBBY) == 0
        assert await phone.mark(LOBBY, 1) is False  # never backwards; nothing sent
    # a new session starts with the markers the server keeps
    async with running(server, "admin", token=token) as (_s3, tablet, tablet_watch):
        await tablet_watch.until(lambda: tablet.markers.get(LOBBY) == last["seq"])


async def test_markers_restored_is_said_once_they_are_known(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    """A client must not mark what it shows before it knows where the user stopped reading
    (each connection's history arrives before its markers): ``restored`` says when it may,
    and ``MarkersRestored`` comes after the markers are in place."""
    token = admin_token(data_dir)
    bob = await connect("bob")
    await join(bob, "lobby")
    last = await bob.request("say", room="lobby", text="one")
    async with running(server, "admin", token=token) as (_s, features, _w):
        await features.mark(LOBBY, last["seq"])
    async with running(server, "admin", token=token) as (_s, features, watch):
        await watch.until(lambda: features.restored)
        kinds = [type(e) for e in watch.features_events]
        assert kinds.count(MarkersRestored) == 1
        assert (
            MarkerMoved(LOBBY, last["seq"]) in watch.features_events[: kinds.index(MarkersRestored)]
        )
    assert not features.restored  # the connection is gone: the next one fetches again


async def test_marks_asked_while_one_is_in_flight_go_as_one(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TUI marks the conversation on screen read at every message that arrives: during a
    # flood that was one mark request per message and reader. At most one is in flight per
    # conversation; the newest seq asked meanwhile follows it.
    from imchat.protocol import Mark

    bob = await connect("bob")
    await join(bob, "lobby")
    seqs = [(await bob.request("say", room="lobby", text=str(n)))["seq"] for n in range(20)]
    async with running(server, "carol") as (session, features, _watch):
        sent: list[int] = []
        real = session.request

        async def counting(request: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(request, Mark):
                sent.append(request.seq)
            return await real(request, *args, **kwargs)

        monkeypatch.setattr(session, "request", counting)
        assert all(await asyncio.gather(*(features.mark(LOBBY, seq) for seq in seqs)))
        assert sent == [seqs[-1]]
        assert features.markers[LOBBY] == seqs[-1]
        assert await features.mark(LOBBY, seqs[0]) is False  # never backwards


async def test_marks_during_a_flood_are_paced(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One in flight is not enough on loopback: answered in a millisecond, a mark per message
    # still went during a flood and spent the read budget (history) on markers.
    from imchat.client.features import MARK_INTERVAL
    from imchat.protocol import Mark

    bob = await connect("bob")
    await join(bob, "lobby")
    seqs = [(await bob.request("say", room="lobby", text=str(n)))["seq"] for n in range(6)]
    async with running(server, "carol") as (session, features, _watch):
        sent: list[int] = []
        pauses: list[tuple[float, int]] = []
        real = session.request
        arriving = iter(seqs[1:])
        later: list[asyncio.Task[bool]] = []

        async def counting(request: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(request, Mark):
                sent.append(request.seq)
                nxt = next(arriving, None)  # the next message arrives while this is in flight
                if nxt is not None:
                    later.append(asyncio.ensure_future(features.mark(LOBBY, nxt)))
                    await asyncio.sleep(0)
            return await real(request, *args, **kwargs)

        async def pause(seconds: float) -> None:
            pauses.append((seconds, len(sent)))

        monkeypatch.setattr(session, "request", counting)
        features._pause = pause
        assert await features.mark(LOBBY, seqs[0])
        await asyncio.gather(*later)
        assert sent == seqs
        # a pause of MARK_INTERVAL after each mark that had a newer one waiting
        assert pauses == [(MARK_INTERVAL, n) for n in range(1, len(seqs))]
        assert features.markers[LOBBY] == seqs[-1]


async def test_typing_is_throttled_and_shown(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    now = [100.0]
    async with running(server, "alice") as (_session, features, _watch):
        features._clock = lambda: now[0]
        assert await features.typing(LOBBY) is True
        assert await features.typing(LOBBY) is False  # within 3 s: not sent
        now[0] += 3.0
        assert await features.typing(LOBBY) is True
        event = await next_event(bob, "typing", skip=frozenset({"online", "joined"}))
        assert event == {"type": "typing", "room": "lobby", "from": "alice"}
    async with running(server, "carol") as (_session, features, watch):
        await bob.request("typing", room="lobby")
        await watch.until(lambda: any(isinstance(e, TypingNow) for e in watch.features_events))
        assert features.typing_in(LOBBY) == ("bob",)
        await bob.request("say", room="lobby", text="done typing")
        await watch.until(lambda: features.typing_in(LOBBY) == ())


async def test_search_hits_name_their_conversation(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    await bob.request("say", room="lobby", text="find me")
    async with running(server, "alice") as (_session, features, _watch):
        await bob.request("dm", to="alice", text="find me too")
        hits, more = await features.search("find")
        assert {(h.conv, h.message["text"]) for h in hits} == {
            (ConvKey.dm("bob"), "find me too"),
            (LOBBY, "find me"),
        }
        assert more is False


def test_book_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from imchat.client import features

    monkeypatch.setattr(features, "MAX_VIEWS", 10)
    monkeypatch.setattr(features, "MAX_WAITING", 3)
    book = MessageBook()
    book.add(LOBBY, [{"seq": n, "from": "a", "text": str(n)} for n in range(1, 101)])
    assert len(book.views(LOBBY)) <= 11 and book.view(LOBBY, 100) is not None
    orphans = [{"seq": 200 + n, "kind": "react", "target": 1000 + n, "text": "x"} for n in range(9)]
    book.add(LOBBY, orphans)
    assert len(book._waiting) <= 3
