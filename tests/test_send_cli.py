"""`imchat send` end to end: a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Clients, free_port, imchat_command, join, next_event, subprocess_env

pytestmark = pytest.mark.timeout(60)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def spawn_send(
    *args: str | bytes, port: int | None, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``imchat send`` running, its standard streams piped (for a test that feeds it live)."""
    where = ["--host", "127.0.0.1", "--port", str(port)] if port is not None else []
    return await asyncio.create_subprocess_exec(
        *imchat_command(),
        "send",
        *where,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or subprocess_env(),
    )


async def imchat_send(
    *args: str | bytes,
    port: int | None,
    stdin: str | bytes | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    proc = await spawn_send(*args, port=port, env=env)
    data = stdin.encode() if isinstance(stdin, str) else stdin or b""
    out, err = await asyncio.wait_for(proc.communicate(data), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr


async def test_say_in_a_room(server: Any, connect: Clients) -> None:
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    result = await imchat_send(
        "--nick", "bot", "--room", "#Lobby", "deploy done ✓", port=server.port
    )
    assert (result.returncode, result.stderr) == (0, "")
    msg = await next_event(
        watcher, "msg", skip=frozenset({"online", "offline", "joined", "parted"})
    )
    assert (msg["room"], msg["from"], msg["text"], msg["seq"]) == (
        "lobby",
        "bot",
        "deploy done ✓",
        1,
    )


async def test_a_room_that_does_not_exist_is_refused_unless_created(
    server: Any, connect: Clients
) -> None:
    # A typo in --room must not create a room nobody reads: each message would be
    # acknowledged (exit 0) and seen by no one.
    result = await imchat_send("--nick", "bot", "--room", "deplyos", "done", port=server.port)
    assert_one_line_error(result, "no_such_room", "deplyos", "--create")
    reader = await connect("reader")
    rooms = await reader.request("rooms")
    assert "deplyos" not in [r["room"] for r in rooms["rooms"]]
    created = await imchat_send(
        "--nick", "bot", "--room", "deploys", "--create", "done", port=server.port
    )
    assert (created.returncode, created.stderr) == (0, "")
    history = await reader.request("history", room="deploys")
    assert [m["text"] for m in history["messages"]] == ["done"]
    # An existing room needs no --create.
    again = await imchat_send("--nick", "bot", "--room", "deploys", "again", port=server.port)
    assert (again.returncode, again.stderr) == (0, "")
    misplaced = await imchat_send(
        "--nick", "bot", "--to", "reader", "--create", "x", port=server.port
    )
    assert_one_line_error(misplaced, "--create goes with --room")


async def test_stdin_one_message_per_line(server: Any, connect: Clients) -> None:
    result = await imchat_send(
        "--nick",
        "bot",
        "--room",
        "lobby",
        "--create",
        "-",
        port=server.port,
        stdin="one\ntwo  \n\tthree\nfour",
    )
    assert (result.returncode, result.stderr) == (0, "")
    # exit 0 means every message was acknowledged: they are all stored
    reader = await connect("reader")
    history = await reader.request("history", room="lobby")
    assert [(m["from"], m["text"]) for m in history["messages"]] == [
        ("bot", "one"),
        ("bot", "two  "),
        ("bot", "\tthree"),
        ("bot", "four"),
    ]


async def test_a_pipe_without_text_is_read_like_dash(server: Any, connect: Clients) -> None:
    # `echo done | imchat send --room ops`: no TEXT with a pipe means standard input.
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", port=server.port, stdin="a\nb\n"
    )
    assert (result.returncode, result.stderr) == (0, "")
    reader = await connect("reader")
    history = await reader.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["a", "b"]


async def test_password_stdin_without_text_is_refused(server: Any) -> None:
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", "--password-stdin", port=server.port
    )
    assert_one_line_error(result, "--password-stdin needs TEXT")


async def test_stdin_beyond_the_rate_limit_is_stored_exactly_once(
    server: Any, connect: Clients
) -> None:
    lines = [f"line {i}" for i in range(55)]  # more than the default burst of 40
    result = await imchat_send(
        "--nick",
        "bot",
        "--room",
        "lobby",
        "--create",
        "-",
        port=server.port,
        stdin="\n".join(lines) + "\n",
    )
    assert (result.returncode, result.stderr) == (0, "")
    reader = await connect("reader")
    history = await reader.request("history", room="lobby", limit=100)
    assert [m["text"] for m in history["messages"]] == lines
    assert [m["seq"] for m in history["messages"]] == list(range(1, 56))


async def test_direct_message(server: Any, connect: Clients) -> None:
    bob = await connect("bob")
    result = await imchat_send("--nick", "bot", "--to", "bob", "ping from cron", port=server.port)
    assert (result.returncode, result.stderr) == (0, "")
    dm = await next_event(bob, "dm")
    assert (dm["from"], dm["to"], dm["text"]) == ("bot", "bob", "ping from cron")


async def test_announce_with_the_local_admin_token(
    server: Any, connect: Clients, data_dir: Path
) -> None:
    alice = await connect("alice")
    result = await imchat_send(
        "--data-dir", str(data_dir), "--all", "restart in 5 min", port=server.port
    )
    assert (result.returncode, result.stderr) == (0, "")
    event = await next_event(alice, "announce")
    assert (event["from"], event["text"], event["seq"]) == ("admin", "restart in 5 min", 1)


async def test_announce_data_dir_from_environment(
    server: Any, connect: Clients, data_dir: Path
) -> None:
    alice = await connect("alice")
    env = subprocess_env(
        IMCHAT_DATA_DIR=str(data_dir), IMCHAT_PORT=str(server.port), IMCHAT_HOST="127.0.0.1"
    )
    result = await imchat_send("--all", "-", port=None, env=env, stdin="a\nb\n")
    assert (result.returncode, result.stderr) == (0, "")
    texts = [(await next_event(alice, "announce"))["text"] for _ in range(2)]
    assert texts == ["a", "b"]


async def test_announce_with_a_wrong_token(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    result = await imchat_send("--all", "--token", "not-the-token", "hi", port=server.port)
    assert_one_line_error(result, "auth_failed")
    assert (await alice.request("history", announcements=True))["messages"] == []


async def test_announce_as_non_admin_is_forbidden(server: Any) -> None:
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", "ok", port=server.port
    )
    assert result.returncode == 0
    env = subprocess_env(IMCHAT_NICK="bot", IMCHAT_TOKEN="whatever")
    result = await imchat_send("--all", "hi", port=server.port, env=env)
    assert_one_line_error(result)
    assert "auth_failed" in result.stderr or "forbidden" in result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--room", "bad room!", "hi"], "bad_room"),
        (["--to", "nobody", "hi"], "no_such_user"),
        (["--room", "lobby", "--create", "bell\x07"], "bad_text"),
        (["--room", "lobby", "--create", "x" * 4001], "bad_text"),
    ],
)
async def test_server_errors_exit_non_zero(
    server: Any, connect: Clients, args: list[str], code: str
) -> None:
    result = await imchat_send("--nick", "bot", *args, port=server.port)
    assert_one_line_error(result, code)


async def test_stdin_stops_at_the_first_refused_line(server: Any, connect: Clients) -> None:
    result = await imchat_send(
        "--nick",
        "bot",
        "--room",
        "lobby",
        "--create",
        "-",
        port=server.port,
        stdin="good\nbad\x01line\nnever sent\n",
    )
    assert_one_line_error(result, "bad_text")
    reader = await connect("reader")
    history = await reader.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["good"]


async def test_nick_taken(server: Any, connect: Clients) -> None:
    await connect("bot")
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", "hi", port=server.port
    )
    assert_one_line_error(result, "nick_taken")


async def test_server_not_running(tmp_path: Path) -> None:
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", "hi", port=free_port()
    )
    assert_one_line_error(result)
    assert result.stdout == ""


async def test_no_target_is_a_usage_error(tmp_path: Path) -> None:
    result = await imchat_send("--nick", "bot", "hi", port=free_port())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


async def test_all_without_a_token_file(tmp_path: Path, server: Any) -> None:
    result = await imchat_send(
        "--data-dir", str(tmp_path / "empty"), "--all", "hi", port=server.port
    )
    assert_one_line_error(result, "admin.token")


async def test_server_going_away_mid_stream(servers: Any, connect: Clients) -> None:
    server = await servers.start()
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    proc = await spawn_send("--nick", "bot", "--room", "lobby", "--create", "-", port=server.port)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"first\n")
        await proc.stdin.drain()
        msg = await next_event(watcher, "msg", skip=frozenset({"online", "offline", "joined"}))
        assert msg["text"] == "first"
        await servers.stop(server)
        proc.stdin.write(b"second\n")
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    result = Result(proc.returncode or 0, out.decode(), err.decode())
    assert_one_line_error(result, "shutting_down")


def test_python_dash_m_imchat() -> None:
    for command in ("server", "send"):
        result = subprocess.run(
            [sys.executable, "-m", "imchat", command, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=subprocess_env(),
        )
        assert result.returncode == 0, result.stderr
        assert "--port" in result.stdout


async def test_guest_send_twice_in_a_row_keeps_its_nick(
    server: Any, connect: Clients, private_state_dir: Path
) -> None:
    """Rev 2: a guest nick stays held after `imchat send` exits; the resume file brings the
    next run back under it (issue 9)."""
    watcher = await connect("watcher")
    await join(watcher, "lobby")
    for text in ("first run", "second run"):
        result = await imchat_send(
            "--nick", "ci", "--room", "lobby", "--create", text, port=server.port
        )
        assert result.returncode == 0, result.stderr
        noise = frozenset({"joined", "parted", "online", "offline"})
        assert (await next_event(watcher, "msg", skip=noise))["text"] == text
    resume_file = private_state_dir / "resume.json"
    assert resume_file.stat().st_mode & 0o777 == 0o600


async def test_held_guest_nick_points_scripts_to_tokens(
    server: Any, connect: Clients, tmp_path: Path
) -> None:
    result = await imchat_send(
        "--nick", "ci", "--room", "lobby", "--create", "from here", port=server.port
    )
    assert result.returncode == 0, result.stderr
    # Another machine (another state dir) cannot use the nick while it is held.
    elsewhere = subprocess_env(IMCHAT_STATE_DIR=str(tmp_path / "runner"))
    result = await imchat_send(
        "--nick",
        "ci",
        "--room",
        "lobby",
        "--create",
        "from a runner",
        port=server.port,
        env=elsewhere,
    )
    assert_one_line_error(result, "nick_taken", "held", "account token", "imchat token create")


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
async def test_stdin_that_is_not_utf8_is_refused_in_one_line(
    server: Any, connect: Clients, locale: str
) -> None:
    """Bytes that are not UTF-8 are a usage mistake of the pipe, whatever the locale: the line
    is refused with one line on stderr (not a traceback), and nothing after it is sent."""
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", "-",
        port=server.port,
        stdin=b"good\nbad \xff\xfe\nnever sent\n",
        env=subprocess_env(LC_ALL=locale, PYTHONUTF8="0"),
    )  # fmt: skip
    assert_one_line_error(result, "UTF-8")
    assert result.returncode == 1
    reader = await connect("reader")
    history = await reader.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["good"]


async def test_text_argument_that_is_not_utf8_is_refused(server: Any) -> None:
    result = await imchat_send(
        "--nick", "bot", "--room", "lobby", "--create", b"bad \xff",
        port=server.port,
        env=subprocess_env(LC_ALL="C"),
    )  # fmt: skip
    assert_one_line_error(result, "UTF-8")
    assert result.returncode == 1


async def test_a_hostile_servers_error_reaches_the_terminal_inert() -> None:
    """What a server says is network text: an error message with escape sequences (a
    terminal title, a screen clear) is printed with its control characters made visible."""
    import json
    import struct

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        hello = json.loads(await reader.readexactly(size))
        error = {
            "type": "error",
            "id": hello.get("id"),
            "code": "auth_failed",
            "message": "\x1b]0;pwned\x07\x1b[2J\x9b1mgone",
        }
        body = json.dumps(error).encode()
        writer.write(struct.pack(">I", len(body)) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await imchat_send("--nick", "bot", "--room", "lobby", "--create", "hi", port=port)
    finally:
        server.close()
    assert_one_line_error(result, "auth_failed", "pwned", "gone")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in result.stderr.rstrip("\n"))


async def test_a_server_that_hangs_up_during_hello_is_passed_for_the_next(
    server: Any, connect: Clients
) -> None:
    """``--host a,b`` where a accepts and then closes while greeting (a node shutting down
    or dying): the message goes through b. Only a connection lost after the greeting moved
    on; this one ended the run with exit 3."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the hello is on its way
        writer.close()

    dying = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        dying_port = dying.sockets[0].getsockname()[1]
        watcher = await connect("watcher")
        await join(watcher, "lobby")
        hosts = f"127.0.0.1:{dying_port},127.0.0.1:{server.port}"
        result = await imchat_send(
            "--host", hosts, "--nick", "bot", "--room", "lobby", "made it", port=None
        )
        assert (result.returncode, result.stderr) == (0, "")
        msg = await next_event(watcher, "msg", skip=frozenset({"online", "joined", "parted"}))
        assert (msg["from"], msg["text"]) == ("bot", "made it")
    finally:
        dying.close()
        await dying.wait_closed()
