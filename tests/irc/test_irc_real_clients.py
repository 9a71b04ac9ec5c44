"""A real IRC client (``weechat-headless``, Debian package) against a real imchat server,
talking with a native client in one room and by DM. Skipped where WeeChat is not installed.

The test drives WeeChat through its FIFO pipe and reads what it received from its logger
files; the native side reads frames. It waits on frames and on log contents, never on sleeps
alone (log files are polled until a deadline).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RawClient, ServerProcess, subprocess_env
from irc_client import IRC_AT

WEECHAT = shutil.which("weechat-headless")
pytestmark = pytest.mark.skipif(WEECHAT is None, reason="weechat-headless is not installed")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    data = tmp_path / "data"
    data.mkdir()
    proc = ServerProcess(data, "--irc-port", "0", env=subprocess_env())
    proc.start()
    match = IRC_AT.search(proc.output)
    assert match
    try:
        yield proc.port, int(match.group(2))
    finally:
        proc.cleanup()


async def wait_for_text(path_glob: tuple[Path, str], text: str, timeout: float = 15.0) -> str:
    directory, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in directory.glob(pattern):
            content = path.read_text(errors="replace")
            if text in content:
                return content
        await asyncio.sleep(0.1)
    found = {p.name: p.read_text(errors="replace") for p in directory.glob("*")}
    raise AssertionError(f"{text!r} not in {pattern}: {found}")


async def native_until(client: RawClient, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        frame = await client.recv(timeout=15.0)
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def test_weechat_and_native_client(server: tuple[int, int], tmp_path: Path) -> None:
    native_port, irc_port = server
    carol = await RawClient.open(native_port)
    await carol.hello("carol")
    await carol.request({"type": "join", "room": "lobby", "id": 1})
    for i in range(3):
        await carol.request({"type": "say", "room": "lobby", "text": f"earlier {i}", "id": 2 + i})

    home = tmp_path / "weechat"
    home.mkdir()
    commands = ";".join(
        [
            "/set logger.file.flush_delay 0",
            "/set logger.file.path ${weechat_data_dir}/logs",
            f"/server add imchat 127.0.0.1/{irc_port} -notls",
            "/set irc.server.imchat.nicks wee",
            "/set irc.server.imchat.autojoin #lobby",
            '/set irc.server.imchat.command "/msg carol hello from weechat"',
            "/connect imchat",
        ]
    )
    assert WEECHAT is not None
    proc = subprocess.Popen(
        [WEECHAT, "-d", str(home), "-r", commands],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        dm = await native_until(carol, "dm", **{"from": "wee"})
        assert dm["text"] == "hello from weechat"
        await native_until(carol, "joined", nick="wee")
        logs = (home / "logs", "*lobby*")
        content = await wait_for_text(logs, "earlier 2")  # the history replayed on JOIN
        assert content.index("earlier 0") < content.index("earlier 2")

        fifo = next(home.glob("weechat_fifo*"))
        with fifo.open("w") as pipe:
            pipe.write("irc.imchat.#lobby *hi carol, from the IRC side\n")
        said = await native_until(carol, "msg", **{"from": "wee"})
        assert said["text"] == "hi carol, from the IRC side"

        carol.send({"type": "say", "room": "lobby", "text": "welcome, wee", "id": 10})
        carol.send({"type": "dm", "to": "wee", "text": "a private word", "id": 11})
        await wait_for_text(logs, "welcome, wee")
        await wait_for_text((home / "logs", "*carol*"), "a private word")
    finally:
        proc.terminate()
        proc.wait(10)
        await carol.close()


IRSSI = shutil.which("irssi")
TMUX = shutil.which("tmux")


async def pane_shows(session: str, text: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run(
            ["tmux", "-L", session, "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
        ).stdout
        if text in screen:
            return screen
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never shown:\n{screen}")


@pytest.mark.skipif(IRSSI is None or TMUX is None, reason="irssi and tmux are needed")
async def test_irssi_in_tmux_and_native_client(server: tuple[int, int], tmp_path: Path) -> None:
    native_port, irc_port = server
    carol = await RawClient.open(native_port)
    await carol.hello("carol")
    await carol.request({"type": "join", "room": "lobby", "id": 1})
    await carol.request({"type": "say", "room": "lobby", "text": "before irssi came", "id": 2})
    session = f"irc-test-irssi-{irc_port}"
    home = tmp_path / "irssi"
    home.mkdir()
    argv = f"irssi --home={home} -c 127.0.0.1 -p {irc_port} -n ircy"
    # A private tmux server (socket named after the session): nobody else's sessions are touched.
    tmux = ["tmux", "-L", session]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "30", argv])
    try:
        await pane_shows(session, "Welcome to imchat")

        def keys(*text: str) -> None:
            subprocess.run([*tmux, "send-keys", "-t", session, *text])

        keys("/join #lobby", "Enter")
        await native_until(carol, "joined", nick="ircy")
        await pane_shows(session, "before irssi came")
        keys("hello from irssi", "Enter")
        said = await native_until(carol, "msg", **{"from": "ircy"})
        assert said["text"] == "hello from irssi"
        carol.send({"type": "say", "room": "lobby", "text": "irssi works", "id": 3})
        await pane_shows(session, "irssi works")
        keys("/quit", "Enter")
        parted = await native_until(carol, "parted", nick="ircy")
        assert parted["reason"] == "quit"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        await carol.close()
