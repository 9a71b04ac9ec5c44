"""Accounts, tokens and logins: the CLI, the store methods, and what a running server enforces."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from secfixtures import raw_fixture, start_server_fixture  # noqa: F401
from secutil import Raw, StartServer
from typer.testing import CliRunner

from imchat.cli import app
from imchat.server import authn as authn_module
from imchat.server.auth import hash_password, hash_token
from imchat.server.ratelimit import FailureLimiter, address_key
from imchat.server.sqlite_store import SQLiteStore

PASSWORD = "correct horse"
runner = CliRunner()


def imchat(data_dir: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)], input=input)
    return result.exit_code, result.stdout, result.stderr


async def aimchat(data_dir: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """The CLI from a test that runs an in-process server: the CLI has its own event loop."""
    return await asyncio.to_thread(imchat, data_dir, *args, input=input)


async def cli_ok(data_dir: Path, *args: str, input: str | None = None) -> str:
    """Run the CLI beside the server and return its stdout; it must succeed."""
    code, out, err = await aimchat(data_dir, *args, input=input)
    assert code == 0, err
    return out


# -- store -------------------------------------------------------------------------------------


async def test_store_account_and_token_methods(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "imchat.db")
    await store.open()
    try:
        await store.create_account("Bob", password_hash=hash_password("x" * 8))
        assert (await store.list_accounts())[0].password_hash.startswith("scrypt$16384$8$1$")
        assert hash_password("x" * 8) != hash_password("x" * 8)  # salted
        await store.create_account("alice", admin=True)
        await store.remember_user("guest")
        assert [(a.nick, a.admin) for a in await store.list_accounts()] == [
            ("alice", True),
            ("Bob", False),
        ]
        assert await store.set_password("bob", "scrypt$new")
        assert not await store.set_password("guest", "scrypt$new")  # not an account
        assert not await store.set_password("nobody", "scrypt$new")
        record = await store.lookup_user("bob")
        assert record is not None and record.account is not None
        assert record.account.password_hash == "scrypt$new"

        await store.add_token("bob", hash_token("t1"), "laptop")
        await store.add_token("alice", hash_token("t2"), "")
        tokens = await store.list_tokens(None)
        assert [(t.id, t.user, t.label) for t in tokens] == [
            (hash_token("t1")[:12], "bob", "laptop"),
            (hash_token("t2")[:12], "alice", ""),
        ]
        assert [t.user for t in await store.list_tokens("alice")] == ["alice"]
        assert not await store.revoke_token("%")  # an id is never a pattern
        assert not await store.revoke_token(hash_token("t1")[:6])
        assert await store.revoke_token(hash_token("t1")[:12].upper())
        assert await store.token_owner(hash_token("t1")) is None
        assert await store.token_owner(hash_token("t2")) == "alice"
        assert not await store.revoke_token(hash_token("t1")[:12])
    finally:
        await store.close()


# -- CLI ---------------------------------------------------------------------------------------


def test_user_add_prompts_twice_and_stores_only_a_hash(tmp_path: Path) -> None:
    code, _, err = imchat(tmp_path, "user", "add", "alice", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 0, err
    assert PASSWORD.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    code, out, _ = imchat(tmp_path, "user", "list")
    assert code == 0
    assert out.split("\n")[1].split() == ["alice", "no", "yes"]
    assert (tmp_path.stat().st_mode & 0o777) == 0o700


def test_user_add_refuses_mismatch_short_password_and_duplicates(tmp_path: Path) -> None:
    code, _, _ = imchat(tmp_path, "user", "add", "alice", input=f"{PASSWORD}\nother pass\n")
    assert code != 0
    code, _, err = imchat(tmp_path, "user", "add", "alice", "--password-stdin", input="short\n")
    assert code == 1 and "at least 8" in err
    code, _, err = imchat(tmp_path, "user", "add", "9bad", "--password-stdin", input=PASSWORD)
    assert code == 1 and "not a valid nick" in err
    assert imchat(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)[0] == 0
    code, _, err = imchat(tmp_path, "user", "add", "ALICE", "--password-stdin", input=PASSWORD)
    assert code == 1 and "already has an account" in err


def test_user_commands_need_an_existing_database(tmp_path: Path) -> None:
    code, _, err = imchat(tmp_path / "typo", "user", "list")
    assert code == 1 and "no imchat database" in err and "\n" not in err.strip()
    assert not (tmp_path / "typo").exists()


def test_tokens_are_shown_once_and_stored_hashed(tmp_path: Path) -> None:
    assert imchat(tmp_path, "user", "add", "bot", "--no-password")[0] == 0
    code, token, _ = imchat(tmp_path, "token", "create", "--user", "bot", "--label", "ci")
    token = token.strip()
    assert code == 0 and len(token) >= 40
    assert token.encode() not in (tmp_path / "imchat.db").read_bytes()
    code, out, _ = imchat(tmp_path, "token", "list", "--user", "bot")
    assert code == 0 and token not in out
    row = out.splitlines()[1].split()
    assert row[0] == hash_token(token)[:12] and row[1] == "bot" and row[-1] == "ci"
    code, _, err = imchat(tmp_path, "token", "create", "--user", "nobody")
    assert code == 1 and "no account" in err
    assert imchat(tmp_path, "token", "revoke", row[0])[0] == 0
    code, _, err = imchat(tmp_path, "token", "revoke", row[0])
    assert code == 1 and "no token" in err
    assert imchat(tmp_path, "token", "list")[1].splitlines()[1:] == []


# -- the server --------------------------------------------------------------------------------


async def test_registered_nick_needs_its_password(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path)
    # Added while the server runs: it reads accounts through at the next hello.
    await cli_ok(tmp_path, "user", "add", "Alice", "--password-stdin", input=PASSWORD)
    for fields in ({}, {"password": "wrong password"}, {"token": "not-a-token"}):
        conn = await raw(server.port)
        reply = await conn.hello("alice", **fields)
        assert reply["type"] == "error" and reply["code"] == "auth_failed", reply
        assert await conn.until_closed() == []  # auth_failed is fatal
    conn = await raw(server.port)
    welcome = await conn.hello("alice", password=PASSWORD)
    assert welcome["type"] == "welcome" and welcome["nick"].lower() == "alice"
    assert welcome["admin"] is False
    # passwd applies to the next login
    new = "another password"
    await cli_ok(tmp_path, "user", "passwd", "alice", "--password-stdin", input=new)
    conn = await raw(server.port)
    assert (await conn.hello("alice", password=PASSWORD))["code"] == "auth_failed"
    conn = await raw(server.port)
    assert (await conn.hello("alice", password=new))["type"] == "welcome"
    # remove: the nick is first come, first served again
    await cli_ok(tmp_path, "user", "remove", "alice")
    conn = await raw(server.port)
    assert (await conn.hello("alice2"))["type"] == "welcome"


async def test_tokens_log_in_until_revoked(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path)
    await cli_ok(tmp_path, "user", "add", "bot", "--no-password")
    token = (await cli_ok(tmp_path, "token", "create", "--user", "bot")).strip()
    conn = await raw(server.port)
    assert (await conn.hello("bot", token=token))["type"] == "welcome"
    conn = await raw(server.port)
    assert (await conn.hello("bot", password=token))["code"] == "auth_failed"
    conn = await raw(server.port)
    admin_token = (tmp_path / "admin.token").read_text().strip()
    assert (await conn.hello("bot", token=admin_token))["code"] == "auth_failed"
    await cli_ok(tmp_path, "token", "revoke", hash_token(token)[:12])
    conn = await raw(server.port)
    assert (await conn.hello("bot", token=token))["code"] == "auth_failed"


async def test_require_account_refuses_guests(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path, require_account=True)
    conn = await raw(server.port)
    reply = await conn.hello("guest")
    assert reply["code"] == "auth_failed"
    assert await conn.until_closed() == []
    await cli_ok(tmp_path, "user", "add", "member", "--password-stdin", input=PASSWORD)
    conn = await raw(server.port)
    assert (await conn.hello("member", password=PASSWORD))["type"] == "welcome"


async def test_server_creates_a_private_data_directory(
    start_server: StartServer, tmp_path: Path
) -> None:
    await start_server(data_dir=tmp_path / "new" / "data")
    assert ((tmp_path / "new" / "data").stat().st_mode & 0o777) == 0o700
    assert ((tmp_path / "new" / "data" / "admin.token").stat().st_mode & 0o777) == 0o600


async def test_guests_allowed_by_default(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]]
) -> None:
    server = await start_server()
    conn = await raw(server.port)
    assert (await conn.hello("guest"))["type"] == "welcome"


async def test_only_admins_announce(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path)
    await cli_ok(tmp_path, "user", "add", "boss", "--admin", "--password-stdin", input=PASSWORD)
    await cli_ok(tmp_path, "user", "add", "worker", "--password-stdin", input=PASSWORD)
    boss = await raw(server.port)
    assert (await boss.hello("boss", password=PASSWORD))["admin"] is True
    worker = await raw(server.port)
    assert (await worker.hello("worker", password=PASSWORD))["admin"] is False
    guest = await raw(server.port)
    await guest.hello("guest")
    for conn in (worker, guest):
        reply = await conn.request({"type": "announce", "text": "hi"})
        assert reply["code"] == "forbidden"
    reply = await boss.request({"type": "announce", "text": "hi"})
    assert reply["type"] == "ok" and reply["delivered"] == 3


async def test_password_is_checked_off_the_event_loop(
    start_server: StartServer,
    raw: Callable[..., Awaitable[Raw]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []
    real = authn_module.verify_password

    def spy(password: str, encoded: str) -> bool:
        threads.append(threading.current_thread())
        return real(password, encoded)

    monkeypatch.setattr(authn_module, "verify_password", spy)
    server = await start_server(data_dir=tmp_path)
    await cli_ok(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)
    conn = await raw(server.port)
    assert (await conn.hello("alice", password=PASSWORD))["type"] == "welcome"
    assert threads and threading.main_thread() not in threads


# -- login rate limit --------------------------------------------------------------------------


async def _hello_from(port: int, source: str, nick: str, **fields: str) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    conn = Raw(reader, writer)
    try:
        return await conn.hello(nick, **fields)
    finally:
        await conn.close()


async def test_failed_logins_are_rate_limited_per_address(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path, auth_failures=3, auth_window=60)
    await cli_ok(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)
    port = server.port
    for _ in range(3):
        reply = await _hello_from(port, "127.0.0.1", "alice", password="guess1234")
        assert reply["code"] == "auth_failed"
    # Blocked: even the right password is not checked, so guessing learns nothing.
    conn = await raw(port)
    reply = await conn.hello("alice", password=PASSWORD)
    assert reply["code"] == "rate_limited"
    # Not fatal: the session stays open and may still join as a guest.
    assert (await conn.request({"type": "ping"}))["type"] == "pong"
    assert (await conn.hello("someguest"))["type"] == "welcome"
    # Another address is not affected.
    assert (await _hello_from(port, "127.0.0.2", "alice", password=PASSWORD))["type"] == "welcome"


async def test_parallel_guesses_are_bounded_too(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path, auth_failures=3)
    await cli_ok(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)
    conns = [await raw(server.port) for _ in range(20)]
    for conn in conns:
        conn.send({"type": "hello", "proto": 1, "nick": "alice", "password": "guess1234"})
    codes = [(await conn.recv())["code"] for conn in conns]
    checked = codes.count("auth_failed")
    # Guesses queue for a password check and are refused once earlier ones failed.
    assert 3 <= checked <= 3 + authn_module.MAX_PARALLEL_PASSWORD_CHECKS - 1, codes
    assert codes.count("rate_limited") == 20 - checked


async def test_many_logins_at_once_from_one_address_all_succeed(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    # An office behind one NAT reconnecting after a restart: only failures count.
    server = await start_server(data_dir=tmp_path, auth_failures=2)
    await cli_ok(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)
    conns = [await raw(server.port) for _ in range(12)]
    for conn in conns:
        conn.send({"type": "hello", "proto": 1, "nick": "alice", "password": PASSWORD})
    assert [(await conn.recv())["type"] for conn in conns] == ["welcome"] * 12
    assert len(server.hub.auth_limiter) == 0  # type: ignore[union-attr]


def test_failure_window_expires_and_memory_is_bounded() -> None:
    now = [0.0]
    limiter = FailureLimiter(2, 60.0, max_addresses=100, clock=lambda: now[0])
    limiter.record("a")
    assert not limiter.blocked("a")
    limiter.record("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 30.0
    assert limiter.blocked("a")
    now[0] = 60.5
    assert not limiter.blocked("a")
    for i in range(1000):
        limiter.record(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    now[0] = 1000.0
    limiter.record("b")
    assert len(limiter) == 1
    assert not FailureLimiter(0, 60.0).blocked("a")  # 0: no limit


async def test_imchat_send_reads_a_password_from_stdin(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path)
    await cli_ok(tmp_path, "user", "add", "alice", "--password-stdin", input=PASSWORD)
    listener = await raw(server.port)
    await listener.hello("bob")
    await listener.request({"type": "join", "room": "lobby"})
    args = ["send", "hi", "--room", "lobby", "--nick", "alice", "--port", str(server.port)]
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.stderr
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, "--password-stdin"], input="wrong password\n"
    )
    assert result.exit_code == 1 and "auth_failed" in result.stderr


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9%eth0", "2001:db8:1:2::/64"),
        ("/run/imchat.sock", "/run/imchat.sock"),
    ],
)
def test_ipv6_clients_are_limited_per_64(host: str, key: str) -> None:
    assert address_key(host) == key


def test_an_address_is_parsed_once_for_a_crowd_of_its_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connect storm from one address: each accepted connection parsed its address twice
    (the listener's count, the session's key), 4 % of the server's samples."""
    from imchat.server import ratelimit

    parsed: list[str] = []
    parse = ratelimit._address_key

    def counting(host: str) -> str:
        parsed.append(host)
        return parse(host)

    monkeypatch.setattr(ratelimit, "_address_key", counting)
    keys = [address_key("198.51.100.23") for _ in range(3)]
    assert keys == ["198.51.100.23"] * 3 and keys[0] is keys[2]
    assert parsed == ["198.51.100.23"]


async def test_revoking_or_removing_cuts_off_sessions_already_logged_in(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], tmp_path: Path
) -> None:
    server = await start_server(data_dir=tmp_path, auth_recheck=0.1)
    await cli_ok(tmp_path, "user", "add", "bot", "--no-password")
    kept = (await cli_ok(tmp_path, "token", "create", "--user", "bot")).strip()
    doomed = (await cli_ok(tmp_path, "token", "create", "--user", "bot")).strip()
    for nick in ("alice", "carol"):
        await cli_ok(tmp_path, "user", "add", nick, "--password-stdin", input=PASSWORD)
    sessions = {}
    for name, nick, fields in (
        ("kept", "bot", {"token": kept}),
        ("doomed", "bot", {"token": doomed}),
        ("alice", "alice", {"password": PASSWORD}),
        ("carol", "carol", {"password": PASSWORD}),
        ("guest", "guest", {}),
    ):
        sessions[name] = conn = await raw(server.port)
        assert (await conn.hello(nick, **fields))["type"] == "welcome"
    await cli_ok(tmp_path, "token", "revoke", hash_token(doomed)[:12])
    await cli_ok(tmp_path, "user", "passwd", "alice", "--password-stdin", input="new password")
    await cli_ok(tmp_path, "user", "remove", "carol")
    for name in ("doomed", "alice", "carol"):
        frames = await sessions[name].until_closed()
        assert frames[-1]["code"] == "auth_failed", (name, frames)
    for name in ("kept", "guest"):
        assert (await sessions[name].request({"type": "ping"}))["type"] == "pong"
