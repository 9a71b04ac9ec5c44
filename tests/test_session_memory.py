"""What an idle session and its user hold: no rate-limit bucket while it is full, no set
for a single room."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from imchat.server.ratelimit import TokenBucket
from imchat.server.session import Session


def test_a_full_bucket_is_let_go_and_the_limit_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr("imchat.server.ratelimit.time.monotonic", lambda: clock[0])
    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=65536),
        loop=SimpleNamespace(time=lambda: 0.0),
        new_bucket=lambda: TokenBucket(1.0, 2),
        registry=SimpleNamespace(watched=set()),
    )
    session = Session(hub)  # type: ignore[arg-type]
    session.rest()
    assert session.bucket.take() and session.bucket.take()
    assert not session.bucket.take()  # the burst is spent
    session.rest()
    clock[0] += 1.0
    session.rest()
    assert session.bucket.take()  # one token back: still the same bucket
    assert not session.bucket.take()
    clock[0] += 2.0
    session.rest()  # full again: let go, and the next one starts full, as this one is now
    assert session.bucket.take() and session.bucket.take()
    assert not session.bucket.take()


def test_an_idle_session_holds_no_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("imchat.server.ratelimit.time.monotonic", lambda: clock[0])
    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=65536),
        loop=SimpleNamespace(time=lambda: 0.0),
        new_bucket=lambda: TokenBucket(1.0, 2),
        registry=SimpleNamespace(watched=set()),
    )
    session = Session(hub)  # type: ignore[arg-type]
    assert session.bucket.take()
    assert hub.registry.watched == {session}  # the idle sweep looks at it until it rests
    assert not session.rest()
    assert session._bucket is not None
    clock[0] += 1.0
    assert session.rest()  # nothing held: the sweep may stop watching it
    assert session._bucket is None


def test_room_set_behaves_as_a_set() -> None:
    """A user's rooms hold one name without a ``set``; every operation matches a set's."""
    from imchat.server.peer import RoomSet

    rooms, model = RoomSet(), set[str]()
    steps = [
        ("add", "a"), ("add", "a"), ("discard", "b"), ("add", "b"), ("add", "c"),
        ("discard", "a"), ("discard", "c"), ("discard", "c"), ("discard", "b"),
        ("discard", "b"), ("add", "d"), ("update", "efd"), ("clear", ""), ("add", "x"),
    ]  # fmt: skip
    for op, arg in steps:
        if op == "update":
            rooms.update(arg)
            model.update(arg)
        elif op == "clear":
            rooms.clear()
            model.clear()
        else:
            getattr(rooms, op)(arg)
            getattr(model, op)(arg)
        assert sorted(rooms) == sorted(model) and len(rooms) == len(model)
        for name in "abcdefx":
            assert (name in rooms) == (name in model)


async def test_users_and_rooms_share_their_strings() -> None:
    """The fan-out's key for a user is the user's own key string, and every member holds the
    room's name as one string (each join's request decoded its own copy)."""
    from imchat.server.fanout import LocalFanout

    fanout = LocalFanout()
    sessions = [SimpleNamespace(user=None) for _ in range(2)]
    for i, session in enumerate(sessions):
        await fanout.connect(session, f"mem{i}", admin=False, ident="")  # type: ignore[arg-type]
        await fanout.join(session, "".join(["lob", "by"]))  # type: ignore[arg-type]
    users = [s.user for s in sessions]
    assert all(next(k for k in fanout._users if k == u.key) is u.key for u in users)  # type: ignore[union-attr]
    first, second = (next(iter(u.rooms)) for u in users)  # type: ignore[union-attr]
    assert first == "lobby" and first is second


async def test_an_idle_session_holds_no_inbox_and_no_decoder(server: Any) -> None:
    from conftest import RawClient

    client = await RawClient.open(server.port)
    await client.hello("idlemem")
    assert (await client.request({"type": "join", "room": "m", "id": 1}))["type"] == "ok"
    await server.hub.drain_tasks(10)  # the requests' handling has ended
    (session,) = server.hub.sessions
    assert session._inbox is None
    assert session.decoder is None


async def test_a_user_with_one_session_holds_a_list_of_one() -> None:
    import sys

    from imchat.server.fanout import LocalFanout

    fanout = LocalFanout()
    first, second = SimpleNamespace(user=None), SimpleNamespace(user=None)
    assert await fanout.connect(first, "solo", admin=False, ident="g.1")  # type: ignore[arg-type]
    user = first.user
    assert user is not None and user.sessions == [first]
    assert sys.getsizeof(user.sessions) == sys.getsizeof([first])  # no spare room
    assert not await fanout.connect(second, "solo", admin=False, ident="g.1")  # type: ignore[arg-type]
    assert user.sessions == [first, second]


class _Transport:
    def __init__(self, peername: Any) -> None:
        self.peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default


def _opened(peername: Any) -> Session:
    """A session whose ``connection_made`` saw ``peername``; it records what the hub saw."""
    seen: list[str] = []
    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=65536),
        loop=SimpleNamespace(time=lambda: 0.0),
        session_opened=lambda s: seen.append(s.peer),
        session_closed=lambda s, exc: seen.append(s.peer),
        registry=SimpleNamespace(untrack_output=lambda s: None),
    )
    session = Session(hub)  # type: ignore[arg-type]
    session.connection_made(_Transport(peername))  # type: ignore[arg-type]
    session.transport = None  # gone, as at close: the address is the session's own
    session.connection_lost(None)
    assert seen == [session.peer, session.peer]
    return session


@pytest.mark.parametrize(
    ("peername", "peer", "addr"),
    [
        (("127.0.0.1", 40001), "127.0.0.1:40001", "127.0.0.1"),
        (("2001:db8::1", 40001, 0, 0), "2001:db8::1:40001", "2001:db8::/64"),
        (("::ffff:10.0.0.1", 40001, 0, 0), "::ffff:10.0.0.1:40001", "10.0.0.1"),
        ("/run/imchat.sock", "/run/imchat.sock", "/run/imchat.sock"),
    ],
)
def test_the_peer_is_the_client_address_from_open_to_close(
    peername: Any, peer: str, addr: str
) -> None:
    """Logged on connect and on close (after the socket is gone) as "host:port"; an IPv4
    client's session keeps only its port beside the address string all its sessions share."""
    session = _opened(peername)
    assert session.peer == peer and session.addr == addr
    if peer == "127.0.0.1:40001":
        assert session._peer == 40001


def test_written_waiters_are_settled_and_let_go_when_the_connection_is_lost() -> None:
    """They live outside the session (no slot per idle session); a lost connection answers
    False and leaves nothing behind."""
    from imchat.server import session as session_module

    loop = asyncio.new_event_loop()
    try:
        hub = SimpleNamespace(
            config=SimpleNamespace(max_frame=65536),
            loop=loop,
            session_closed=lambda s, exc: None,
            registry=SimpleNamespace(untrack_output=lambda s: None),
        )
        session = Session(hub)  # type: ignore[arg-type]
        session._writing_paused = True  # nothing can be settled as written yet
        first, second = session.wait_written(), session.wait_written()
        assert session_module._written[session] == [first, second]
        session.connection_lost(None)
        assert first.result() is False and second.result() is False
        assert session not in session_module._written
    finally:
        loop.close()


def test_only_sessions_the_listener_admitted_count_as_admitted() -> None:
    from imchat.server.session import AdmittedSession

    assert AdmittedSession.admitted and not Session.admitted
    hub = SimpleNamespace(loop=SimpleNamespace(time=float))
    assert not hasattr(AdmittedSession(hub), "__dict__")  # type: ignore[arg-type]


def test_a_logged_in_session_lets_go_of_the_time_it_opened() -> None:
    """Only the hello timeout reads ``opened``, and only while there is no user."""
    from imchat.server.session import LOGGED_IN

    hub = SimpleNamespace(loop=SimpleNamespace(time=lambda: 123.5))
    session = Session(hub)  # type: ignore[arg-type]
    session.rest()
    assert session.opened == 123.5  # no hello yet: the hello timeout still needs it
    session.user = SimpleNamespace()  # type: ignore[assignment]
    session.rest()
    assert session.opened is LOGGED_IN


def test_sessions_that_read_at_the_same_loop_time_share_its_float() -> None:
    clock = [5000.001]
    hub = SimpleNamespace(loop=SimpleNamespace(time=lambda: float(str(clock[0]))))
    a, b, c = (Session(hub) for _ in range(3))  # type: ignore[arg-type]
    for session in (a, b, c):
        session.closing = True  # only the time of the read matters here
    a.data_received(b"x")
    b.data_received(b"x")
    clock[0] += 0.001
    c.data_received(b"x")
    assert a.last_rx == b.last_rx == 5000.001 and a.last_rx is b.last_rx
    assert c.last_rx == 5000.002
