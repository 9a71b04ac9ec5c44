"""Durability: an ok is a promise that survives kill -9; seq continues across restarts;
SIGTERM/SIGINT shut down cleanly with `shutting_down` to every connection."""

from __future__ import annotations

import asyncio
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TIMEOUT,
    Clients,
    RawClient,
    admin_token,
    imchat_command,
    join,
    next_event,
    subprocess_env,
)

from imchat.client import Connection
from imchat.protocol import encode_message

pytestmark = pytest.mark.timeout(60)


async def hello_raw(port: int, nick: str, **fields: Any) -> RawClient:
    raw = await RawClient.open(port)
    await raw.hello(nick, **fields)
    return raw


async def test_sigkill_right_after_ok_loses_nothing(server_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = server_process(data, "--rate", "0")
    raw = await hello_raw(proc.port, "alice")
    assert (await raw.request({"type": "join", "room": "lobby", "id": "j"}))["type"] == "ok"
    # pipeline many messages and kill -9 the moment the 100th ok is read
    total, kill_at = 400, 100
    raw.send_bytes(
        b"".join(
            encode_message(
                {"type": "say", "room": "lobby", "text": f"m{i}", "cid": f"c{i}", "id": i}
            )
            for i in range(total)
        )
    )
    acked: dict[int, dict[str, Any]] = {}
    while len(acked) < kill_at:
        frame = await raw.recv()
        if frame["type"] == "ok":
            acked[frame["id"]] = frame
    proc.kill(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    await raw.close()

    proc = server_process(data, "--rate", "0")
    bob = await Connection.connect("127.0.0.1", proc.port)
    try:
        await bob.hello("bob")
        history = await bob.request("history", room="lobby", after=0, limit=500)
        messages = history["messages"]
        stored = [m["seq"] for m in messages]
        assert stored == list(range(1, len(stored) + 1)), "seq must be gapless"
        assert len(stored) >= kill_at
        by_seq = {m["seq"]: m for m in messages}
        for i, ok in acked.items():
            message = by_seq[ok["seq"]]
            assert message == {
                "type": "msg",
                "room": "lobby",
                "seq": ok["seq"],
                "ts": ok["ts"],
                "from": "alice",
                "text": f"m{i}",
            }
        # retries after the crash find the acked messages, and nothing new is stored
        alice = await Connection.connect("127.0.0.1", proc.port)
        # her guest identity was online at the crash: held for her resume from the restart
        await alice.hello("alice", resume=raw.resumes["alice"])
        await alice.request("join", room="lobby")
        for i in (0, kill_at - 1):
            again = await alice.request("say", room="lobby", text=f"m{i}", cid=f"c{i}")
            assert (again["seq"], again["ts"]) == (acked[i]["seq"], acked[i]["ts"])
        # and counting goes on without a gap
        nxt = await alice.request("say", room="lobby", text="after restart")
        assert nxt["seq"] == len(stored) + 1
        await alice.close()
    finally:
        await bob.close()


async def test_sigkill_keeps_everything_acked(server_process: Any, tmp_path: Path) -> None:
    """DMs still to deliver, announcements, new rooms, topics and known users all survive
    a kill -9 right after their ok (or welcome)."""
    data = tmp_path / "d"
    proc = server_process(data)
    token = admin_token(data)
    alice = await Connection.connect("127.0.0.1", proc.port)
    await alice.hello("alice")
    await alice.close()
    admin = await Connection.connect("127.0.0.1", proc.port)
    await admin.hello("admin", token=token)
    dm = await admin.request("dm", to="alice", text="offline note")
    ann = await admin.request("announce", text="we'll be back")
    await admin.request("join", room="fresh")
    await admin.request("topic", room="fresh", text="set just before the crash")
    carol = await Connection.connect("127.0.0.1", proc.port)
    await carol.hello("carol")  # known from her welcome on
    proc.kill(signal.SIGKILL)
    proc.wait()
    admin.abort()
    carol.abort()

    proc = server_process(data)
    assert admin_token(data) == token  # the token survives restarts
    raw = await hello_raw(proc.port, "alice", resume=(alice.welcome or {})["resume"])
    event = await raw.recv_skip()
    assert event == {
        "type": "dm",
        "from": "admin",
        "to": "alice",
        "seq": dm["seq"],
        "ts": dm["ts"],
        "text": "offline note",
    }
    history = await raw.request({"type": "history", "announcements": True, "id": 1})
    assert history["messages"] == [
        {
            "type": "announce",
            "from": "admin",
            "seq": ann["seq"],
            "ts": ann["ts"],
            "text": "we'll be back",
        }
    ]
    rooms = await raw.request({"type": "rooms", "id": 2})
    assert rooms["rooms"] == [{"room": "fresh", "count": 0, "topic": "set just before the crash"}]
    # carol's guest identity was online at the crash: held from the restart, so DMs reach it
    reply = await raw.request({"type": "dm", "to": "carol", "text": "still known?", "id": 3})
    assert (reply["type"], reply["seq"]) == ("ok", 1)
    await raw.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_shuts_down_cleanly(server_process: Any, tmp_path: Path, sig: int) -> None:
    proc = server_process(tmp_path / "d")
    alice = await hello_raw(proc.port, "alice")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    bob = await hello_raw(proc.port, "bob")
    anonymous = await RawClient.open(proc.port)
    assert await anonymous.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    proc.kill(sig)
    for raw in (alice, bob, anonymous):
        frames = await raw.recv_until_eof(timeout=10)
        assert frames, "no shutting_down frame"
        last = frames[-1]
        assert last == {"type": "error", "code": "shutting_down", "message": last["message"]}
        await raw.close()
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert "Traceback" not in proc.output


async def test_seq_continues_across_restart(servers: Any, connect: Clients) -> None:
    server = await servers.start()
    admin = await connect.admin()
    alice = await connect("alice")
    await join(alice, "lobby")
    for i in range(3):
        await alice.request("say", room="lobby", text=f"m{i}")
    await alice.request("topic", room="lobby", text="kept")
    await alice.request("dm", to="admin", text="dm 1")
    await admin.request("announce", text="ann 1")
    await servers.stop(server)

    await servers.start()
    alice = await connect("alice")
    ok = await alice.request("join", room="lobby")
    assert (ok["last_seq"], ok["topic"]) == (3, "kept")
    assert (await alice.request("say", room="lobby", text="m3"))["seq"] == 4
    assert (await alice.request("dm", to="admin", text="dm 2"))["seq"] == 2
    admin = await connect.admin()
    assert (await admin.request("announce", text="ann 2"))["seq"] == 2
    history = await alice.request("history", room="lobby")
    assert [(m["seq"], m["text"]) for m in history["messages"]] == [
        (1, "m0"),
        (2, "m1"),
        (3, "m2"),
        (4, "m3"),
    ]
    rooms = await alice.request("rooms")
    assert rooms["rooms"] == [{"room": "lobby", "count": 1, "topic": "kept"}]


async def test_known_users_survive_restart(servers: Any, connect: Clients) -> None:
    server = await servers.start()
    await (await connect("bob")).close()
    await servers.stop(server)
    await servers.start()
    alice = await connect("alice")
    ok = await alice.request("dm", to="bob", text="still know you")
    assert ok["seq"] == 1
    bob = await connect("bob")
    event = await next_event(bob, "dm")
    assert (event["text"], event["seq"]) == ("still know you", 1)


async def test_delivered_dm_is_not_redelivered_after_restart(
    servers: Any, connect: Clients
) -> None:
    server = await servers.start()
    await (await connect("bob")).close()
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="once only")
    bob = await connect("bob")
    assert (await next_event(bob, "dm"))["text"] == "once only"
    await bob.close()
    await servers.stop(server)
    await servers.start()
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.request("dm", to="bob", text="second")
    event = await next_event(bob, "dm")
    assert (event["text"], event["seq"]) == ("second", 2)


async def test_cli_listening_line_and_admin_token(server_process: Any, tmp_path: Path) -> None:
    proc = server_process(tmp_path / "d")
    assert proc.host == "127.0.0.1"
    assert proc.port > 0
    path = tmp_path / "d" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = await Connection.connect("127.0.0.1", proc.port)
    welcome = await conn.hello("admin", token=path.read_text().strip())
    assert welcome["admin"] is True
    await conn.close()


async def test_cli_reads_imchat_environment(server_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "env-data"
    data.mkdir()
    env = subprocess_env(
        IMCHAT_HOST="127.0.0.1",
        IMCHAT_PORT="0",
        IMCHAT_DATA_DIR=str(data),
        IMCHAT_MAX_TEXT="5",
        IMCHAT_MAX_FRAME="2048",
    )
    proc = server_process(data, env=env, flags=False)
    assert (data / "admin.token").exists()
    conn = await Connection.connect("127.0.0.1", proc.port)
    welcome = await conn.hello("alice")
    assert (welcome["max_text"], welcome["max_frame"]) == (5, 2048)
    await conn.close()


async def test_cli_flags_reach_the_server(server_process: Any, tmp_path: Path) -> None:
    proc = server_process(
        tmp_path / "d",
        "--max-text",
        "7",
        "--max-frame",
        "4096",
        "--idle-timeout",
        "1",
        "--rate",
        "1",
        "--burst",
        "2",  # the join spends one (rev 2)
        "--log-level",
        "debug",
    )
    raw = await hello_raw(proc.port, "alice")
    await raw.request({"type": "join", "room": "lobby", "id": 1})
    reply = await raw.request({"type": "say", "room": "lobby", "text": "x" * 8, "id": 2})
    assert reply["code"] == "bad_text"
    assert (await raw.request({"type": "say", "room": "lobby", "text": "x", "id": 3}))["seq"] == 1
    reply = await raw.request({"type": "say", "room": "lobby", "text": "y", "id": 4})
    assert reply["code"] == "rate_limited"
    frames = await raw.recv_until_eof(timeout=TIMEOUT)
    assert frames[-1]["code"] == "idle_timeout"
    await raw.close()


async def test_sigterm_with_requests_in_flight(server_process: Any, tmp_path: Path) -> None:
    """Every request answered before shutting_down is kept; shutting_down is the last frame."""
    data = tmp_path / "d"
    proc = server_process(data, "--rate", "0")
    raw = await hello_raw(proc.port, "alice")
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    total = 500
    raw.send_bytes(
        b"".join(
            encode_message({"type": "say", "room": "lobby", "text": f"m{i}", "id": i})
            for i in range(total)
        )
    )
    first = await raw.recv_skip(skip=frozenset({"online", "offline", "msg", "joined"}))
    assert first["type"] == "ok"
    proc.kill(signal.SIGTERM)
    frames = [first, *await raw.recv_until_eof(timeout=10)]
    await raw.close()
    assert await asyncio.to_thread(proc.wait, 10) == 0
    last = frames[-1]
    assert last == {"type": "error", "code": "shutting_down", "message": last["message"]}
    oks = {f["id"]: f for f in frames if f["type"] == "ok"}
    assert sorted(oks) == list(range(len(oks))), "replies in request order, none skipped"
    # an ok's events follow it: every acked message was also sent to its sender
    sent = {f["seq"] for f in frames if f["type"] == "msg"}
    assert {ok["seq"] for ok in oks.values()} <= sent

    proc = server_process(data)
    reader = await hello_raw(proc.port, "bob")
    history = await reader.request(
        {"type": "history", "room": "lobby", "after": 0, "limit": 500, "id": "h"}
    )
    stored = {m["seq"]: m for m in history["messages"]}
    assert list(stored) == list(range(1, len(stored) + 1))
    for i, ok in oks.items():
        assert (stored[ok["seq"]]["text"], stored[ok["seq"]]["ts"]) == (f"m{i}", ok["ts"])
    await reader.close()


def test_cli_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *imchat_command(),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "d"),
                "--log-level",
                "warning",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=subprocess_env(),
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0] or "in use" in lines[0].lower()


async def test_sigterm_exits_even_when_clients_do_not_read(
    server_process: Any, tmp_path: Path
) -> None:
    """Clients that stopped reading cannot hold the shutdown hostage: exit 0 all the same."""
    # Kernel send buffers autotuned as on main, so the 6 MB below is taken without a hang.
    proc = server_process(
        tmp_path / "d",
        "--rate",
        "0",
        "--max-buffer",
        str(64 * 1024 * 1024),
        "--socket-send-buffer",
        "0",
    )
    stuck = []
    for nick in ("sender", "listener"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proc.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        raw = RawClient(reader, writer)
        await raw.hello(nick)
        await raw.request({"type": "join", "room": "lobby", "id": "j"})
        stuck.append(raw)
    # ~6 MB of events for each of them: more than the kernel buffers take; nobody reads
    say = encode_message({"type": "say", "room": "lobby", "text": "s" * 4000})
    for _ in range(6):
        stuck[0].send_bytes(say * 256)
        await stuck[0].drain()
    ping = await RawClient.open(proc.port)  # the server itself is still responsive
    assert await ping.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    await ping.close()
    proc.kill(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    for raw in stuck:
        raw.writer.transport.abort()
