"""Start-up: private files, admin token rotation, refusal on lost data, one-line store errors.

Lost data is reproduced as an operator meets it: a real server process killed with SIGKILL
or stopped, files deleted, the server started again. The in-process variants run on both
backends (``IMCHAT_TEST_BACKEND=redis`` flushes the test's keys instead of deleting files).
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REDIS_BACKEND_URL,
    Servers,
    admin_token,
    free_port,
    imchat_command,
    subprocess_env,
)

from imchat.client import Connection, ServerError
from imchat.server.store import StoreUnavailable

DB_FILES = ("imchat.db", "imchat.db-wal", "imchat.db-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def login_fails(port: int, token: str) -> bool:
    conn = await Connection.connect("127.0.0.1", port)
    try:
        await conn.hello("admin", token=token)
    except ServerError as exc:
        return exc.code == "auth_failed"
    finally:
        conn.abort()
    return False


async def wipe_store(servers: Servers, data_dir: Path) -> None:
    """What a lost store looks like: the database files gone, or the Redis keys flushed."""
    if servers.redis_prefix is None:
        for name in DB_FILES:
            (data_dir / name).unlink(missing_ok=True)
        return
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_BACKEND_URL)
    keys = [k async for k in client.scan_iter(match=f"{servers.redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# --------------------------------------------------------------------------- file modes


async def test_existing_0755_data_dir_and_0644_database_are_made_private(
    servers: Servers, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    server = await servers.start(data_dir=data)
    await servers.stop(server)
    if servers.redis_prefix is None:
        os.chmod(data / "imchat.db", 0o644)
    os.chmod(data / "admin.token", 0o644)
    os.chmod(data, 0o755)
    await servers.start(data_dir=data)
    assert mode(data) == 0o700
    assert mode(data / "admin.token") == 0o600
    for name in DB_FILES:
        if (data / name).exists():
            assert mode(data / name) == 0o600, name


async def test_new_database_files_are_0600_under_a_permissive_umask(
    servers: Servers, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        await servers.start(data_dir=tmp_path / "new")
    finally:
        os.umask(old)
    for name in DB_FILES:
        if (tmp_path / "new" / name).exists():
            assert mode(tmp_path / "new" / name) == 0o600, name


# --------------------------------------------------------------------------- admin token


async def test_deleted_admin_token_is_rotated_and_the_old_one_revoked(
    servers: Servers, data_dir: Path
) -> None:
    server = await servers.start()
    old = admin_token(data_dir)
    await servers.stop(server)
    (data_dir / "admin.token").unlink()
    server = await servers.start()
    new = admin_token(data_dir)
    assert new != old
    assert await login_fails(server.port, old)
    assert not await login_fails(server.port, new)


async def test_admin_token_survives_a_plain_restart(servers: Servers, data_dir: Path) -> None:
    server = await servers.start()
    token = admin_token(data_dir)
    await servers.stop(server)
    server = await servers.start()
    assert admin_token(data_dir) == token
    assert not await login_fails(server.port, token)


# --------------------------------------------------------------------------- lost store


async def test_empty_store_beside_earlier_data_is_refused_unless_fresh(
    servers: Servers, data_dir: Path
) -> None:
    server = await servers.start()
    old_token = admin_token(data_dir)
    await servers.stop(server)
    await wipe_store(servers, data_dir)
    with pytest.raises(StoreUnavailable) as info:
        await servers.start()
    message = str(info.value)
    assert "\n" not in message
    assert "--fresh-store" in message
    assert admin_token(data_dir) == old_token  # nothing rewritten by the refused start
    server = await servers.start(fresh_store=True)
    assert admin_token(data_dir) != old_token
    assert not await login_fails(server.port, admin_token(data_dir))


async def test_a_new_data_dir_starts_without_the_flag(servers: Servers, tmp_path: Path) -> None:
    server = await servers.start(data_dir=tmp_path / "brand-new")
    assert (tmp_path / "brand-new" / "imchat.marker").exists()
    assert not await login_fails(server.port, admin_token(tmp_path / "brand-new"))


def run_server(data: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``imchat server`` expected to exit on its own (a refused start)."""
    return subprocess.run(
        [*imchat_command(), "server", "--port", "0", "--data-dir", str(data), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


async def say_something(port: int) -> None:
    conn = await Connection.connect("127.0.0.1", port)
    await conn.hello("alice")
    await conn.request("join", room="lobby")
    ok = await conn.request("say", room="lobby", text="remember me", cid="c1")
    assert ok["seq"] == 1
    conn.abort()


@pytest.mark.timeout(60)
async def test_lost_wal_after_sigkill_refuses_to_start(server_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "wal"
    proc = server_process(data)
    await say_something(proc.port)
    proc.kill(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert (data / "imchat.db-wal").exists()
    (data / "imchat.db-wal").unlink()
    (data / "imchat.db-shm").unlink(missing_ok=True)
    token = admin_token(data)
    result = await asyncio.to_thread(run_server, data)
    assert_one_line_refusal(result, "refusing to start", "--fresh-store")
    assert admin_token(data) == token


@pytest.mark.timeout(60)
async def test_deleted_database_refuses_then_fresh_store_starts_anew(
    server_process: Any, tmp_path: Path
) -> None:
    data = tmp_path / "deleted"
    proc = server_process(data)
    await say_something(proc.port)
    proc.kill(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait) == 0
    token = admin_token(data)
    for name in DB_FILES:
        (data / name).unlink(missing_ok=True)
    result = await asyncio.to_thread(run_server, data)
    assert_one_line_refusal(result, "imchat.db", "--fresh-store")
    assert not (data / "imchat.db").exists()
    fresh = server_process(data, "--fresh-store")
    assert admin_token(data) != token
    assert await login_fails(fresh.port, token)


# --------------------------------------------------------------------------- store errors


@pytest.mark.timeout(60)
async def test_damaged_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "damaged"
    data.mkdir()
    (data / "imchat.db").write_bytes(b"this is not a database at all " * 200)
    result = await asyncio.to_thread(run_server, data)
    assert_one_line_refusal(result, "imchat.db")


@pytest.mark.timeout(60)
async def test_unopenable_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "unopenable"
    (data / "imchat.db").mkdir(parents=True)  # what the store cannot open or write
    result = await asyncio.to_thread(run_server, data)
    assert_one_line_refusal(result, "imchat.db")


@pytest.mark.timeout(60)
async def test_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = await asyncio.to_thread(run_server, tmp_path / "r", "--redis", url)
    assert_one_line_refusal(result, "Redis")


@pytest.mark.skipif(REDIS_BACKEND_URL is None, reason="a cluster shares Redis")
async def test_a_new_cluster_node_adds_its_admin_token_without_revoking(
    servers: Servers, data_dir: Path, tmp_path: Path
) -> None:
    first = await servers.start()
    await servers.start(data_dir=tmp_path / "node2")  # a new member: no marker, no token
    assert admin_token(tmp_path / "node2") != admin_token(data_dir)
    assert not await login_fails(first.port, admin_token(data_dir))
    assert not await login_fails(first.port, admin_token(tmp_path / "node2"))
