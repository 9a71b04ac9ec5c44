"""Clients that know several nodes move to another one when theirs dies, and keep their nick."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from imchat.client.servers import Endpoint
from imchat.client.session import Backoff, ChatSession, SessionEvent, State

from .cluster_support import TIMEOUT, Clients, Cluster, is_type

FAST = Backoff(base=0.05, cap=0.2)


@contextlib.asynccontextmanager
async def running(session: ChatSession) -> AsyncIterator[asyncio.Queue[SessionEvent]]:
    events: asyncio.Queue[SessionEvent] = asyncio.Queue()
    session.add_listener(events.put_nowait)
    task = asyncio.create_task(session.run())
    try:
        yield events
    finally:
        await session.close()
        await asyncio.wait_for(task, TIMEOUT)


async def wait_until(events: asyncio.Queue[SessionEvent], predicate: object) -> None:
    async def loop() -> None:
        while not predicate():  # type: ignore[operator]
            await events.get()

    await asyncio.wait_for(loop(), TIMEOUT)


async def test_guest_moves_to_another_node_and_keeps_its_nick(
    cluster: Cluster, clients: Clients
) -> None:
    # The default node timeout (15 s): the dead node's users are not reaped during the test,
    # so the nick is still online there; only the guest's resume secret gets it back.
    nodes = cluster.start_many(2)
    servers = [Endpoint("127.0.0.1", node.port) for node in nodes]
    watcher = await clients.connect(nodes[1], "watcher")
    await watcher.request("join", room="lobby")
    session = ChatSession("roamer", servers=servers, backoff=FAST, rooms=["lobby"])
    async with running(session) as events:
        await wait_until(
            events, lambda: session.state is State.CONNECTED and "lobby" in session.rooms
        )
        nodes[0].kill()
        await wait_until(events, lambda: session.state is State.RECONNECTING)
        await wait_until(events, lambda: session.state is State.CONNECTED)
        assert session.nick == "roamer"
        session.say("lobby", "still me")
        said = await watcher.wait_for(is_type("msg", room="lobby", text="still me"))
        assert said["from"] == "roamer"


async def test_send_uses_the_next_node_when_the_first_is_down(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    watcher = await clients.connect(nodes[1], "watcher")
    await watcher.request("join", room="lobby")
    nodes[0].kill()
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "imchat",
            "send",
            "--host",
            hosts,
            "--nick",
            "ci",
            "--room",
            "lobby",
            "built",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert result.returncode == 0, result.stderr
    said = await watcher.wait_for(is_type("msg", room="lobby", text="built"))
    assert said["from"] == "ci"


async def test_send_reading_stdin_moves_to_the_next_node_when_its_own_dies(
    cluster: Cluster, clients: Clients, tmp_path: Path
) -> None:
    """``tail -f log | imchat send --host a,b`` goes on through b when a dies: each line is
    stored once (the one in flight is sent again with its cid) and it exits 0 at the end of
    its input. It exited 3 (``connection lost``) with the rest of its input unsent."""
    nodes = cluster.start_many(2)
    watcher = await clients.connect(nodes[1], "watcher")
    await watcher.request("join", room="lobby")
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "imchat", "send", "--host", hosts, "--nick", "piper"],
        *["--room", "lobby", "-"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "IMCHAT_STATE_DIR": str(tmp_path / "state")},
    )
    assert proc.stdin is not None
    proc.stdin.write(b"before\n")
    await proc.stdin.drain()
    said = await watcher.wait_for(is_type("msg", room="lobby", text="before"))
    assert said["from"] == "piper"
    nodes[0].kill()
    proc.stdin.write(b"after 1\nafter 2\n")
    proc.stdin.close()
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 3)
    assert proc.returncode == 0, err.decode()
    await watcher.wait_for(is_type("msg", room="lobby", text="after 2"))
    texts = [e["text"] for e in watcher.seen if e.get("type") == "msg"]
    assert texts == ["before", "after 1", "after 2"]
