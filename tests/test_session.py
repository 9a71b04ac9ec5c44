"""Session: hello/welcome, ping, bye, authentication, several sessions, ids, idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, admin_token, join, next_event, pending_events

from imchat.client import ConnectionClosed, ServerError
from imchat.protocol import CLIENT_MAX_FRAME, FrameDecoder, encode_message


def check_welcome(welcome: dict[str, Any], nick: str, *, admin: bool = False) -> None:
    assert welcome["type"] == "welcome"
    assert welcome["proto"] == 1
    assert welcome["nick"] == nick
    assert isinstance(welcome["server"], str) and welcome["server"].startswith("imchat/")
    assert welcome["max_frame"] == 65536
    assert welcome["max_text"] == 4000
    assert welcome["admin"] is admin


async def test_hello_welcome(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send({"type": "hello", "proto": 1, "nick": "alice", "client": "pytest", "id": 1})
    welcome = await raw.recv()
    check_welcome(welcome, "alice")
    assert welcome["id"] == 1
    assert "motd" not in welcome or isinstance(welcome["motd"], str)


@pytest.mark.server_config(motd="be nice\nor else", max_frame=2048, max_text=100)
async def test_welcome_announces_limits_and_motd(server: Any, connect: Clients) -> None:
    conn = await connect("alice")
    assert conn.welcome is not None
    assert conn.welcome["motd"] == "be nice\nor else"
    assert conn.welcome["max_frame"] == 2048
    assert conn.welcome["max_text"] == 100


async def test_welcome_keeps_the_chosen_spelling(server: Any, connect: Clients) -> None:
    conn = await connect("AlIcE")
    assert conn.welcome is not None and conn.welcome["nick"] == "AlIcE"
    other = await connect("bob")
    users = await other.request("users")
    assert sorted(users["users"]) == ["AlIcE", "bob"]


async def test_ping_before_and_after_hello(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    assert await raw.request({"type": "ping", "id": "p1"}) == {"type": "pong", "id": "p1"}
    await raw.hello("alice")
    assert await raw.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "join", "room": "lobby"},
        {"type": "part", "room": "lobby"},
        {"type": "say", "room": "lobby", "text": "hi"},
        {"type": "topic", "room": "lobby", "text": "hi"},
        {"type": "rooms"},
        {"type": "users"},
        {"type": "dm", "to": "bob", "text": "hi"},
        {"type": "announce", "text": "hi"},
        {"type": "history", "room": "lobby"},
    ],
)
async def test_hello_required(server: Any, connect: Clients, request_: dict[str, Any]) -> None:
    raw = await connect.raw()
    reply = await raw.request({**request_, "id": 9})
    assert reply["type"] == "error"
    assert reply["code"] == "hello_required"
    assert reply["id"] == 9
    assert isinstance(reply["message"], str)
    # not fatal: the session can still say hello
    welcome = await raw.hello("alice")
    assert welcome["nick"] == "alice"


async def test_object_without_type_before_hello_is_bad_request(
    server: Any, connect: Clients
) -> None:
    raw = await connect.raw()
    reply = await raw.request({"id": 4, "nick": "alice"})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == 4
    assert (await raw.request({"type": "ping", "id": 5}))["type"] == "pong"


async def test_bye_before_hello_closes(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send({"type": "bye"})
    assert await raw.recv_until_eof() == []


async def test_bye_flushes_what_it_owes_then_closes(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("alice")
    raw.send({"type": "join", "room": "lobby", "id": 1})
    raw.send({"type": "say", "room": "lobby", "text": "last words", "id": 2})
    raw.send({"type": "bye", "id": 3})
    raw.send({"type": "ping", "id": 4})  # after bye: never answered
    frames = [f for f in await raw.recv_until_eof() if f["type"] not in ("online", "offline")]
    types = [(f["type"], f.get("id")) for f in frames]
    assert ("ok", 1) in types and ("ok", 2) in types
    msg = next(f for f in frames if f["type"] == "msg")
    assert msg["text"] == "last words"
    assert ("pong", 4) not in types


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"type": "hello", "proto": 2, "nick": "alice"}, "bad_request"),
        ({"type": "hello", "proto": 0, "nick": "alice"}, "bad_request"),
        ({"type": "hello", "nick": "alice"}, "bad_request"),
        ({"type": "hello", "proto": 1}, "bad_request"),
        ({"type": "hello", "proto": 1, "nick": None}, "bad_request"),
        ({"type": "hello", "proto": 1, "nick": ""}, "bad_nick"),
        ({"type": "hello", "proto": 1, "nick": "1alice"}, "bad_nick"),
        ({"type": "hello", "proto": 1, "nick": "-alice"}, "bad_nick"),
        ({"type": "hello", "proto": 1, "nick": "al ice"}, "bad_nick"),
        ({"type": "hello", "proto": 1, "nick": "alicé"}, "bad_nick"),
        ({"type": "hello", "proto": 1, "nick": "a" * 33}, "bad_nick"),
    ],
)
async def test_bad_hello(server: Any, connect: Clients, hello: dict[str, Any], code: str) -> None:
    raw = await connect.raw()
    reply = await raw.request({**hello, "id": "h"})
    assert reply == {"type": "error", "id": "h", "code": code, "message": reply["message"]}
    # the session is still usable and not logged in
    reply = await raw.request({"type": "users", "id": "u"})
    assert reply["code"] == "hello_required"
    assert (await raw.hello("alice"))["nick"] == "alice"


async def test_longest_nick_and_all_special_characters(server: Any, connect: Clients) -> None:
    for nick in ("n" * 32, "_[]\\^{}|`", "a-9"):
        conn = await connect(nick)
        assert conn.welcome is not None and conn.welcome["nick"] == nick


async def test_second_hello_is_bad_request(server: Any, connect: Clients) -> None:
    conn = await connect("alice")
    with pytest.raises(ServerError) as info:
        await conn.request("hello", proto=1, nick="bob")
    assert info.value.code == "bad_request"
    users = await conn.request("users")
    assert users["users"] == ["alice"]


async def test_nick_taken_case_insensitively_while_online(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    other = await connect.raw()
    for n, nick in enumerate(("alice", "ALICE", "Alice")):
        refused = await other.request({"type": "hello", "proto": 1, "nick": nick, "id": n})
        assert refused["type"] == "error" and refused["code"] == "nick_taken"
    # not fatal: another nick works on the same connection (the client library's Connection
    # ends a connection whose hello failed; the server does not)
    welcome = await other.request({"type": "hello", "proto": 1, "nick": "alice2", "id": 9})
    assert welcome["type"] == "welcome" and welcome["nick"] == "alice2"
    # once alice is gone her guest identity is held (rev 2): a stranger is still refused,
    # and her own resume brings her back under the spelling she chose
    resume = (alice.welcome or {})["resume"]
    await alice.close()
    with pytest.raises(ServerError) as info:
        await (await connect()).hello("ALICE")
    assert info.value.code == "nick_taken" and "held" in info.value.message
    late = await connect("ALICE", resume=resume)
    assert late.welcome is not None and late.welcome["nick"] == "ALICE"


async def test_admin_token_file(server: Any, data_dir: Any) -> None:
    path = data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(admin_token(data_dir)) >= 16


async def test_admin_hello_with_token(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    assert admin.welcome is not None
    check_welcome(admin.welcome, "admin", admin=True)


@pytest.mark.parametrize(
    "fields",
    [{}, {"token": "wrong"}, {"password": "wrong"}, {"token": ""}],
)
async def test_account_nick_needs_credentials(
    server: Any, connect: Clients, fields: dict[str, Any]
) -> None:
    raw = await connect.raw()
    raw.send({"type": "hello", "proto": 1, "nick": "admin", **fields, "id": 1})
    frames = await raw.recv_until_eof()
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "error"
    assert frames[0]["code"] == "auth_failed"
    assert frames[0]["id"] == 1


async def test_account_nick_is_case_insensitive(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send({"type": "hello", "proto": 1, "nick": "ADMIN", "id": 1})
    frames = await raw.recv_until_eof()
    assert [(f["type"], f["code"]) for f in frames] == [("error", "auth_failed")]


async def test_token_of_another_account_does_not_log_in_as_it(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    """The admin token names the admin account: it is no credential for any other nick.

    The contract does not say whether a token on an account-less nick is refused or ignored;
    either is fine as long as it never makes that session an admin.
    """
    raw = await connect.raw()
    raw.send(
        {"type": "hello", "proto": 1, "nick": "alice", "token": admin_token(data_dir), "id": 1}
    )
    reply = await raw.recv()
    if reply["type"] == "error":
        assert (reply["code"], reply["id"]) == ("auth_failed", 1)
    else:
        assert (reply["type"], reply["nick"], reply["admin"]) == ("welcome", "alice", False)
        error = await raw.request({"type": "announce", "text": "x", "id": 2})
        assert error["code"] == "forbidden"


async def test_several_sessions_of_one_account(server: Any, connect: Clients) -> None:
    everything = frozenset()
    bob = await connect("bob")
    await join(bob, "lobby")
    # rev 2: presence goes to DM peers and room mates; a DM makes bob admin's peer
    await bob.request("dm", to="admin", text="hi")
    await pending_events(bob, skip=everything)  # whatever bob was told about himself
    one = await connect.admin()
    online = await next_event(bob, "online", skip=everything)
    assert online["nick"] == "admin"
    two = await connect.admin()
    assert await pending_events(bob, skip=everything) == [], "online only for the first session"
    ok = await one.request("join", room="lobby")
    assert sorted(ok["members"]) == ["admin", "bob"]
    for conn in (one, two, bob):
        event = await next_event(conn, "joined", skip=frozenset({"online", "offline", "dm"}))
        assert (event["room"], event["nick"]) == ("lobby", "admin")
    # a member's every session gets the room's events, and may speak in it
    said = await two.request("say", room="lobby", text="from two")
    for conn in (one, two, bob):
        msg = await next_event(conn, "msg")
        assert (msg["from"], msg["text"], msg["seq"]) == ("admin", "from two", said["seq"])
    users = await bob.request("users")
    assert sorted(users["users"]) == ["admin", "bob"]
    # closing one session is not the user leaving
    await one.close()
    said = await bob.request("say", room="lobby", text="still there?")
    msg = await next_event(two, "msg")
    assert msg["seq"] == said["seq"]
    assert await pending_events(bob, skip=everything) == [msg], (
        "bob saw only his own message: no parted/offline for admin's first session"
    )
    assert sorted((await bob.request("users"))["users"]) == ["admin", "bob"]
    await two.close()
    parted = await next_event(bob, "parted", skip=frozenset({"offline"}))
    assert (parted["room"], parted["nick"], parted["reason"]) == ("lobby", "admin", "quit")


@pytest.mark.server_config(idle_timeout=0.5)
async def test_idle_session_is_closed(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("alice")
    frames = await raw.recv_until_eof(timeout=5)
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "idle_timeout"
    assert "id" not in frames[-1]


@pytest.mark.server_config(idle_timeout=0.5)
async def test_idle_timeout_also_before_hello(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    frames = await raw.recv_until_eof(timeout=5)
    assert [(f["type"], f["code"]) for f in frames] == [("error", "idle_timeout")]


@pytest.mark.server_config(idle_timeout=1.0)
async def test_pings_keep_a_session_alive(server: Any, connect: Clients) -> None:
    conn = await connect("alice")
    # A silent session opened after alice: once it is closed as idle, alice has been
    # connected longer than the idle timeout, and only her pings kept her.
    silent = await connect.raw()
    await silent.hello("silent")
    frames = []
    while not silent.eof:
        assert (await asyncio.wait_for(conn.request("ping"), TIMEOUT))["type"] == "pong"
        with contextlib.suppress(TimeoutError, EOFError):
            # A ping every 200 ms at most: the wait is for the silent session's close.
            frames.append(await silent.recv(timeout=0.2))
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["idle_timeout"]
    assert (await asyncio.wait_for(conn.request("ping"), TIMEOUT))["type"] == "pong"
    assert not conn.closed


async def test_server_stop_sends_shutting_down(servers: Any, connect: Clients) -> None:
    server = await servers.start()
    alice = await connect.raw()
    await alice.hello("alice")
    anonymous = await connect.raw()
    assert (await anonymous.request({"type": "ping", "id": 1}))["type"] == "pong"
    await servers.stop(server)
    for raw in (alice, anonymous):
        frames = await raw.recv_until_eof()
        assert frames[-1] == {
            "type": "error",
            "code": "shutting_down",
            "message": frames[-1]["message"],
        }


async def test_conn_after_close(server: Any, connect: Clients) -> None:
    conn = await connect("alice")
    await conn.close()
    with pytest.raises(ConnectionClosed):
        await conn.request("ping")


async def test_password_account(server: Any, connect: Clients) -> None:
    from imchat.server.auth import hash_password

    await server.store.create_account("Carol", password_hash=hash_password("s3cret"))
    one = await connect("carol", password="s3cret")
    two = await connect("CAROL", password="s3cret")  # an account may have several sessions
    assert one.welcome is not None and two.welcome is not None
    assert one.welcome["admin"] is False
    for fields in ({"password": "wrong"}, {}, {"password": ""}, {"token": "s3cret"}):
        raw = await connect.raw()
        raw.send({"type": "hello", "proto": 1, "nick": "carol", **fields, "id": 1})
        frames = await raw.recv_until_eof()
        assert [(f["type"], f["code"], f["id"]) for f in frames] == [("error", "auth_failed", 1)]
    # a known account is a known user: DMs to it wait for its next hello
    alice = await connect("alice")
    await alice.request("dm", to="carol", text="hi")  # peers now: alice hears carol leave
    await next_event(alice, "dm")
    await one.close()
    await two.close()
    offline = await next_event(alice, "offline", skip=frozenset({"online"}))
    assert offline["nick"] in ("carol", "CAROL", "Carol")
    ok = await alice.request("dm", to="carol", text="for later")
    carol = await connect("carol", password="s3cret")
    event = await next_event(carol, "dm")
    assert (event["seq"], event["text"]) == (ok["seq"], "for later")


async def test_half_closed_client_gets_its_replies_then_eof(server: Any) -> None:
    """A script that sends its requests and shuts down its side (`nc -N`) still gets answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        encode_message({"type": "hello", "proto": 1, "nick": "script", "id": 1})
        + encode_message({"type": "join", "room": "lobby", "id": 2})
        + encode_message({"type": "say", "room": "lobby", "text": "from a pipe", "id": 3})
    )
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
    decoder = FrameDecoder(CLIENT_MAX_FRAME)
    replies = {
        message["id"]: message for message in map(json.loads, decoder.feed(data)) if "id" in message
    }
    assert replies[1]["type"] == "welcome"
    assert replies[2]["type"] == "ok"
    assert replies[3]["type"] == "ok" and replies[3]["seq"] == 1
    writer.close()
