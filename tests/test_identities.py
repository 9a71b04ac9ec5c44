"""Guest identities, accounts outranking guests, epochs and DM queues (protocol revision 2).

Each test reproduces an attack or a loss from issue 9 over real sockets; it runs on both
backends (``IMCHAT_TEST_BACKEND=redis`` reruns it on Redis).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, RawClient, Servers, join, next_event, pending_events

from imchat.client import Connection, ServerError
from imchat.server.accounts import add_user, remove_user

PASSWORD = "correct horse"
NOISE = frozenset({"online", "joined", "parted", "msg"})


async def refused(conn: Connection, kind: str, **fields: Any) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await asyncio.wait_for(conn.request(kind, **fields), TIMEOUT)
    return caught.value


async def hello_refused(connect: Clients, nick: str, **hello: Any) -> ServerError:
    conn = await connect()
    with pytest.raises(ServerError) as caught:
        await asyncio.wait_for(conn.hello(nick, **hello), TIMEOUT)
    return caught.value


async def leave(conn: Connection) -> None:
    await conn.close()


# -- guest identities --------------------------------------------------------------------------


async def test_welcome_carries_identity_fields(server: Any, connect: Clients) -> None:
    guest = await connect("bob")
    welcome = guest.welcome or {}
    assert isinstance(welcome["resume"], str) and 1 <= len(welcome["resume"]) <= 64
    assert welcome["account"] is False
    assert welcome["guest_hold"] == 300
    assert isinstance(welcome["epoch"], str) and welcome["epoch"]
    admin = await connect.admin()
    assert (admin.welcome or {})["account"] is True
    assert "resume" not in (admin.welcome or {})
    assert (admin.welcome or {})["epoch"] == welcome["epoch"]


async def test_held_guest_nick_needs_its_resume(server: Any, connect: Clients) -> None:
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    bob = await connect("bob")
    await join(bob, "lobby")
    resume = (bob.welcome or {})["resume"]
    second = await connect("BOB", resume=resume)  # a second session of the same identity
    assert (second.welcome or {})["resume"] == resume
    await leave(second)
    await leave(bob)
    # A room mate hears bob go: by then the server holds the nick (else it is still online).
    assert (await next_event(watcher, "offline", skip=NOISE))["nick"] == "bob"
    error = await hello_refused(connect, "bob")
    assert error.code == "nick_taken"
    assert "held" in error.message and " s more" in error.message
    wrong = await hello_refused(connect, "bob", resume="not-the-secret")
    assert wrong.code == "nick_taken"
    back = await connect("bob", resume=resume)
    assert (back.welcome or {})["resume"] == resume


async def test_online_guest_nick_needs_its_resume(server: Any, connect: Clients) -> None:
    await connect("bob")
    error = await hello_refused(connect, "bob")
    assert error.code == "nick_taken" and "online" in error.message


async def test_held_guest_gets_dms_sent_while_away(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    alice = await connect("alice")
    await leave(bob)
    ok = await alice.request("dm", to="bob", text="while you were out")
    back = await connect("bob", resume=resume)
    event = await next_event(back, "dm")
    assert (event["text"], event["seq"]) == ("while you were out", ok["seq"])


@pytest.mark.server_config(guest_hold=0)
async def test_stranger_taking_a_freed_guest_nick_gets_nothing(
    server: Any, connect: Clients
) -> None:
    """Issue 9: whoever took a free guest nick got its queued DMs and its DM history."""
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="secret 1")
    await next_event(bob, "dm")
    await bob.request("dm", to="alice", text="secret 2")
    await leave(bob)  # the hold is 0 s: the identity is gone at once
    assert (await next_event(alice, "offline", skip=frozenset({"dm", "online"})))["nick"] == "bob"
    assert (await refused(alice, "dm", to="bob", text="secret 3")).code == "no_such_user"
    stranger = await connect("bob", fresh=True)
    assert (stranger.welcome or {})["resume"] != (bob.welcome or {})["resume"]
    assert await pending_events(stranger) == []
    history = await stranger.request("history", **{"with": "alice"})
    assert history["messages"] == []
    # The stream is the nick pair's: the new identity reads it from its own first message on.
    ok = await alice.request("dm", to="bob", text="hello, new bob")
    assert ok["seq"] == 3
    history = await stranger.request("history", **{"with": "alice"})
    assert [m["text"] for m in history["messages"]] == ["hello, new bob"]
    assert (await alice.request("history", **{"with": "bob"}))["messages"][0]["text"] == "secret 1"


@pytest.mark.server_config(guest_hold=0)
async def test_cids_are_not_carried_to_the_next_guest(server: Any, connect: Clients) -> None:
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    first = await connect("bob")
    await join(first, "lobby")
    ok = await first.request("say", room="lobby", text="mine", cid="c-1")
    await leave(first)
    # A room mate hears bob go: by then his identity is gone (a hold of 0 s).
    assert (await next_event(watcher, "offline", skip=NOISE))["nick"] == "bob"
    second = await connect("bob", fresh=True)
    await join(second, "lobby")
    again = await second.request("say", room="lobby", text="also mine", cid="c-1")
    assert again["seq"] == ok["seq"] + 1
    event = await next_event(second, "msg")
    assert event["text"] == "also mine"


@pytest.mark.server_config(guest_hold=0)
async def test_a_later_guest_cannot_edit_or_delete_an_earlier_ones_messages(
    server: Any, connect: Clients
) -> None:
    """Revision 3 authorship is the identity's, not the nick's (both backends)."""
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    first = await connect("bob")
    await join(first, "lobby")
    ok = await first.request("say", room="lobby", text="mine")
    await leave(first)
    assert (await next_event(watcher, "offline", skip=NOISE))["nick"] == "bob"
    second = await connect("bob", fresh=True)
    await join(second, "lobby")
    for request in (
        {"type": "edit", "room": "lobby", "seq": ok["seq"], "text": "not yours"},
        {"type": "delete", "room": "lobby", "seq": ok["seq"]},
    ):
        kind = str(request.pop("type"))
        assert (await refused(second, kind, **request)).code == "forbidden"
    # Its own messages it may change, as anyone may.
    own = await second.request("say", room="lobby", text="new bob")
    edited = await second.request("edit", room="lobby", seq=own["seq"], text="new bob!")
    assert edited["seq"] == own["seq"] + 1


async def test_dm_queue_is_bounded(servers: Servers, connect: Clients) -> None:
    await servers.start(max_queued=2)
    bob = await connect("bob")
    alice = await connect("alice")
    await leave(bob)
    await alice.request("dm", to="bob", text="1")
    await alice.request("dm", to="bob", text="2")
    error = await refused(alice, "dm", to="bob", text="3")
    assert error.code == "limit_reached"
    # Nothing was stored for the refused one: the pair's seq did not move.
    assert (await alice.request("dm", to="alice", text="note to self"))["seq"] == 1
    history = await alice.request("history", **{"with": "bob"})
    assert [m["text"] for m in history["messages"]] == ["1", "2"]


async def _stalled_session(server: Any, nick: str, resume: str) -> RawClient:
    """A session with a tiny receive window that reads its welcome and nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    stalled = RawClient(reader, writer)
    assert (await stalled.hello(nick, resume=resume))["resume"] == resume
    return stalled


@pytest.mark.server_config(rate=0, max_buffer=16384, max_queued_per_sender=0)
async def test_queued_dms_stay_queued_for_a_reader_that_never_reads(
    server: Any, connect: Clients
) -> None:
    """Issue 9: what a slow reader did not receive was deleted from the queue anyway."""
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    alice = await connect("alice")
    await leave(bob)
    count = 300
    for i in range(count):
        await alice.request("dm", to="bob", text=f"{i:04d} " + "x" * 3990)
    stalled = await _stalled_session(server, "bob", resume)
    await stalled.close()
    back = await connect("bob", resume=resume)
    texts: list[str] = []
    while len(texts) < count:
        try:
            texts.append((await next_event(back, "dm", timeout=10))["text"][:4])
        except TimeoutError:
            break
    assert texts == [f"{i:04d}" for i in range(count)]


@pytest.mark.server_config(rate=0, max_queued_per_sender=0)
async def test_a_second_session_gets_the_queue_while_the_first_never_reads(
    server: Any, connect: Clients
) -> None:
    """The queued DMs went only to the identity's first session: while it did not read, a
    second session saw none of them, nor new DMs (held behind the first one's queue); on
    Redis they stayed hidden until every session of the identity had ended."""
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    alice = await connect("alice")
    await leave(bob)
    count = 150  # more than one page, and each page more than the sockets' buffers
    for i in range(count):
        await alice.request("dm", to="bob", text=f"{i:04d} " + "x" * 3990)
    stalled = await _stalled_session(server, "bob", resume)
    second = await connect("bob", resume=resume)
    texts = [(await next_event(second, "dm", timeout=10))["text"][:4] for _ in range(count)]
    assert texts == [f"{i:04d}" for i in range(count)]
    await alice.request("dm", to="bob", text="after")
    assert (await next_event(second, "dm", timeout=10))["text"] == "after"
    await stalled.close()
    await alice.request("dm", to="bob", text="last")  # nothing resent before it, nor after
    assert (await next_event(second, "dm", timeout=10))["text"] == "last"
    assert [e for e in await pending_events(second) if e["type"] == "dm"] == []


async def test_each_queued_dm_is_delivered_once(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    alice = await connect("alice")
    await leave(bob)
    for i in range(5):
        await alice.request("dm", to="bob", text=f"m{i}")
    first = await connect("bob", resume=resume)
    assert [(await next_event(first, "dm"))["text"] for _ in range(5)] == [
        f"m{i}" for i in range(5)
    ]
    await pending_events(first)
    await leave(first)
    again = await connect("bob", resume=resume)
    assert [e for e in await pending_events(again) if e["type"] == "dm"] == []


# -- accounts outrank guests -------------------------------------------------------------------


@pytest.mark.server_config(auth_recheck=0.2)
async def test_account_creation_ends_an_online_guest(server: Any, connect: Clients) -> None:
    squatter = await connect("bob")
    await add_user(server.store, "bob", PASSWORD)
    error = await next_event(squatter, "error", timeout=10)
    assert error["code"] == "nick_taken"
    await asyncio.wait_for(squatter.wait_closed(), TIMEOUT)
    # Its resume does not bring it back.
    again = await hello_refused(connect, "bob", resume=(squatter.welcome or {})["resume"])
    assert again.code == "auth_failed"


@pytest.mark.server_config(auth_recheck=0)
async def test_owner_never_shares_a_user_with_the_squatter(server: Any, connect: Clients) -> None:
    """Issue 9: the owner's session joined the guest's user (an admin could not announce)."""
    squatter = await connect("bob")
    await join(squatter, "lobby")
    await add_user(server.store, "bob", PASSWORD, admin=True)
    owner = await connect("bob", password=PASSWORD)
    assert (owner.welcome or {})["account"] is True
    error = await next_event(squatter, "error")
    assert error["code"] == "nick_taken"
    ok = await owner.request("announce", text="mine now")
    assert ok["delivered"] == 1
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="for the owner")
    dm = await next_event(owner, "dm", skip=frozenset({"online", "offline", "announce"}))
    assert dm["text"] == "for the owner"
    assert (await refused(owner, "say", room="lobby", text="x")).code == "not_in_room"


async def test_account_created_over_a_held_guest_inherits_nothing(
    server: Any, connect: Clients
) -> None:
    bob = await connect("bob")
    alice = await connect("alice")
    await leave(bob)
    await alice.request("dm", to="bob", text="for the guest")
    await add_user(server.store, "bob", PASSWORD)
    owner = await connect("bob", password=PASSWORD)
    assert [e for e in await pending_events(owner) if e["type"] == "dm"] == []
    assert (await owner.request("history", **{"with": "alice"}))["messages"] == []


async def test_removed_accounts_dms_do_not_go_to_the_next_holder(
    server: Any, connect: Clients
) -> None:
    await add_user(server.store, "bob", PASSWORD)
    owner = await connect("bob", password=PASSWORD)
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="read this")
    await next_event(owner, "dm")
    await leave(owner)
    await alice.request("dm", to="bob", text="queued for the owner")
    await remove_user(server.store, "bob")
    stranger = await connect("bob", fresh=True)
    assert [e for e in await pending_events(stranger) if e["type"] == "dm"] == []
    assert (await stranger.request("history", **{"with": "alice"}))["messages"] == []


# -- epochs ------------------------------------------------------------------------------------


async def test_epoch_survives_a_restart_and_a_fresh_store_gets_a_new_one(
    servers: Servers, connect: Clients, tmp_path: Path
) -> None:
    first = await servers.start()
    epoch = ((await connect("alice")).welcome or {})["epoch"]
    await servers.stop(first)
    again = await servers.start()
    assert ((await connect("bob")).welcome or {})["epoch"] == epoch
    await servers.stop(again)
    fresh_prefix = {"redis_prefix": f"{servers.redis_prefix}fresh:"} if servers.redis_prefix else {}
    fresh = await servers.start(tmp_path / "fresh", **fresh_prefix)
    try:
        assert ((await connect("carol")).welcome or {})["epoch"] != epoch
    finally:
        await servers.stop(fresh)
        if fresh_prefix:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(_redis_url())
            keys = [k async for k in client.scan_iter(match=f"{fresh_prefix['redis_prefix']}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


def _redis_url() -> str:
    from conftest import REDIS_BACKEND_URL

    assert REDIS_BACKEND_URL is not None
    return REDIS_BACKEND_URL


async def test_guest_identity_and_its_hold_survive_a_restart(
    servers: Servers, connect: Clients
) -> None:
    first = await servers.start()
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    await servers.stop(first)  # bob was online: held from the restart on
    await servers.start()
    error = await hello_refused(connect, "bob")
    assert error.code == "nick_taken" and "held" in error.message
    back = await connect("bob", resume=resume)
    assert (back.welcome or {})["resume"] == resume


# -- scoped presence ---------------------------------------------------------------------------


async def test_presence_reaches_only_rooms_and_dm_peers(server: Any, connect: Clients) -> None:
    """Issue 9: every arrival sent ``online`` to every session (N² for N arrivals)."""
    alice = await connect("alice")
    await join(alice, "lobby")
    stranger = await connect("stranger")
    bob = await connect("bob")
    resume = (bob.welcome or {})["resume"]
    await join(bob, "lobby")
    await bob.close()
    presence = frozenset({"online", "offline"})

    def about_bob(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] in presence and e["nick"] == "bob"]

    # alice shares a room with bob: she hears him leave; the stranger does not.
    offline = await next_event(alice, "offline", skip=frozenset({"joined", "parted"}))
    assert offline["nick"] == "bob"
    assert about_bob(await pending_events(stranger, skip=frozenset())) == []
    # bob comes back: in no room yet and with no DM, nobody but himself hears it.
    bob = await connect("bob", resume=resume)
    own = await next_event(bob, "online")
    assert own["nick"] == "bob"
    for other in (alice, stranger):
        events = await pending_events(other, skip=frozenset({"joined", "parted"}))
        assert about_bob(events) == [], events
    # A DM makes them peers: alice now hears bob come and go.
    await alice.request("dm", to="bob", text="hi")
    await next_event(alice, "dm")
    await bob.close()
    assert (await next_event(alice, "offline"))["nick"] == "bob"
    await connect("bob", resume=resume)
    assert (await next_event(alice, "online"))["nick"] == "bob"
    assert about_bob(await pending_events(stranger, skip=frozenset())) == []


async def test_epoch_of_a_server_process_survives_restart_and_kill(
    server_process: Any, tmp_path: Path
) -> None:
    """A real server process: restart and SIGKILL keep the epoch; a fresh data dir gets another."""
    import signal

    data = tmp_path / "d"
    epochs = []
    for stop in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        proc = server_process(data)
        raw = await RawClient.open(proc.port)
        epochs.append((await raw.hello(f"u{len(epochs)}"))["epoch"])
        await raw.close()
        proc.kill(stop)
        proc.wait()
    assert len(set(epochs)) == 1
    fresh = server_process(tmp_path / "fresh")
    raw = await RawClient.open(fresh.port)
    assert (await raw.hello("u"))["epoch"] != epochs[0]
    await raw.close()


async def test_revision_1_database_is_migrated(tmp_path: Path) -> None:
    """Accounts keep their queued DMs, DM history and cids; guests of revision 1 had no
    identity, so their queues are dropped and their nicks are free."""
    import sqlite3

    from imchat.server.sqlite_store import SQLiteStore
    from imchat.server.streams import StreamId

    path = tmp_path / "imchat.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE users (key TEXT PRIMARY KEY, nick TEXT NOT NULL, created REAL NOT NULL,
            account INTEGER NOT NULL DEFAULT 0, admin INTEGER NOT NULL DEFAULT 0,
            password_hash TEXT);
        INSERT INTO users VALUES ('bob', 'bob', 0, 1, 0, NULL), ('gus', 'gus', 0, 0, 0, NULL);
        CREATE TABLE messages (stream TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
            sender TEXT NOT NULL, cid TEXT, event BLOB NOT NULL, PRIMARY KEY (stream, seq))
            WITHOUT ROWID;
        CREATE TABLE pending_dms (recipient TEXT NOT NULL, stream TEXT NOT NULL,
            seq INTEGER NOT NULL, PRIMARY KEY (recipient, stream, seq)) WITHOUT ROWID;
        INSERT INTO pending_dms VALUES ('bob', 'd:alice bob', 1), ('gus', 'd:alice gus', 1);
        """
    )
    for stream, text in (
        ("d:alice bob", b'{"text":"to bob"}'),
        ("d:alice gus", b'{"text":"to gus"}'),
    ):
        conn.execute("INSERT INTO messages VALUES (?, 1, 1, 'alice', NULL, ?)", (stream, text))
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        bob = await store.identity("bob")
        assert bob is not None and bob.account is not None
        queued = await store.peek_pending(bob.ident, 10)
        assert [payload for _, _, payload in queued] == [b'{"text":"to bob"}']
        history = await store.history(
            StreamId.dm("alice", "bob"), after=None, before=None, limit=10, viewer=bob.ident
        )
        assert history == [b'{"text":"to bob"}']
        assert await store.identity("gus") is None  # a free guest nick
        assert await store.peek_pending("gus", 10) == []
        assert await store.epoch()
    finally:
        await store.close()


async def test_message_answered_internal_is_retried_with_its_cid(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``internal`` means the outcome is unknown: the library resends with the same cid."""
    from imchat.client.send import Target, send_one

    alice = await connect("alice")
    await join(alice, "lobby")
    store = server.store
    # A room message goes through start_append where the store has it (no task).
    start = getattr(store, "start_append", None)
    append = store.append if start is None else start
    failures: list[str] = []

    async def flaky_append(draft: Any) -> Any:
        if not failures:
            failures.append(draft.cid)
            stored = await append(draft)  # stored, but the ok is lost to an error
            raise RuntimeError(f"lost after storing seq {stored.seq}")
        return await append(draft)

    monkeypatch.setattr(store, "append", flaky_append)
    if start is not None:
        monkeypatch.setattr(store, "start_append", lambda d: asyncio.ensure_future(flaky_append(d)))
        # Then start_append (the context reads queue_append once, when the server starts).
        monkeypatch.setattr(server.hub.ctx, "queue_append", None)
    ok = await send_one(alice, Target(room="lobby"), "exactly once")
    assert failures and ok["seq"] == 1
    history = await alice.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["exactly once"]


async def test_queued_dms_keep_seq_order_when_the_clock_steps_back(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9: undelivered DMs were ordered by ts, so a clock step backwards reordered them."""
    import time
    from types import SimpleNamespace

    from imchat.server import sqlite_store

    clock = iter(range(2_000_000_000, 0, -100))  # every reading 100 s earlier than the last
    wall = SimpleNamespace(
        time=lambda: float(next(clock)), perf_counter=time.perf_counter, monotonic=time.monotonic
    )
    monkeypatch.setattr(sqlite_store, "time", wall)
    bob = await connect("bob")
    alice = await connect("alice")
    await leave(bob)
    for i in range(5):
        await alice.request("dm", to="bob", text=f"m{i}")
    back = await connect("bob")
    texts = [(await next_event(back, "dm"))["text"] for _ in range(5)]
    assert texts == [f"m{i}" for i in range(5)]


@pytest.mark.server_config(guest_hold=0)
async def test_nothing_is_kept_for_a_guest_identity_that_ended(
    server: Any, connect: Clients, servers: Servers
) -> None:
    """Queues, DM views and cids of ended guest identities do not pile up in the store."""
    alice = await connect("alice")
    await join(alice, "lobby")
    bob = await connect("bob")
    await join(bob, "lobby")
    await bob.request("say", room="lobby", text="with a cid", cid="c-1")
    await bob.request("dm", to="alice", text="hi")
    await alice.request("dm", to="bob", text="hi back")
    await leave(bob)
    assert (await next_event(alice, "offline", skip=NOISE | {"dm"}))["nick"] == "bob"
    if servers.redis_prefix is None:
        rows = server.store._reader.execute("SELECT ident FROM dm_since").fetchall()
        assert len(rows) == 1  # alice's only
    else:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(_redis_url())
        try:
            left = [
                k
                async for k in client.scan_iter(match=f"{servers.redis_prefix}*")
                if b":g." in k or k.endswith(b"guest:bob")
            ]
            # Room-creation budgets (alice created the lobby) are buckets that expire on
            # their own, within burst / rate: nothing piles up.
            budgets = [k for k in left if b":roomrate:" in k]
            for key in budgets:
                assert 0 < await client.pttl(key) <= 20 * 60_000 + 1000, key
            left = [k for k in left if k not in budgets]
            alice_ident = [k for k in left if b"since:g." in k]
            assert len(left) == len(alice_ident) == 1, left  # alice's DM view only
        finally:
            await client.aclose()


async def test_a_new_guest_whose_hello_failed_is_not_held(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The identity was claimed, then the hello failed before its welcome (here: the fanout
    # refusing once, as a cluster node does when it loses Redis). Nobody has its resume, so
    # holding it for guest_hold locked the nick's owner out (nick_taken for 300 s).
    fanout = server.hub.fanout
    real_connect = fanout.connect

    async def failing_once(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(fanout, "connect", real_connect)
        raise OSError("lost the cluster store")

    monkeypatch.setattr(fanout, "connect", failing_once)
    error = await hello_refused(connect, "gus")
    assert error.code == "internal"
    gus = await connect("gus")  # no resume: there was never one to keep
    assert (gus.welcome or {})["resume"]


def test_secrets_of_new_identities_come_from_a_pool_of_urandom_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connect storm: every guest's hello drew two secrets (its identity id and its resume)
    with a ``getrandom`` call each, which lets go of the GIL, so the event loop waited for
    the store's writer thread twice per hello. They are slices of one 64 KiB draw now: still
    the OS's random bytes, each byte handed out once, none shared with a forked child."""
    import os

    from imchat.server import store

    draws: list[int] = []
    urandom = os.urandom

    def counting(n: int) -> bytes:
        draws.append(n)
        return urandom(n)

    monkeypatch.setattr(store.os, "urandom", counting)
    store._POOL.reset()
    resumes = {store.new_resume() for _ in range(50)}
    idents = {store.new_ident("g") for _ in range(50)}
    assert len(resumes) == 50 and len(idents) == 50
    assert all(len(r) == 43 and r.isascii() and "=" not in r for r in resumes)
    assert all(i.startswith("g.") and len(i) == 26 and int(i[2:], 16) >= 0 for i in idents)
    assert draws == [store.POOL_SIZE]  # 50 x 32 + 50 x 12 bytes from one draw
    store._POOL.reset()
    assert store.new_resume() not in resumes
    assert len(draws) == 2
