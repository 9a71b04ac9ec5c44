"""Start a server, stage a lively chat, and save screenshots of the TUI (SVG and PNG).

    .venv/bin/python screenshots/make_screenshots.py [--out screenshots]

Everything runs in one process on 127.0.0.1: an in-process server on an ephemeral port, a few
scripted users on the client library, and the TUI (headless, 120x36, and at the end 80x24)
as "alice". PNGs are made
with ``rsvg-convert`` (apt: librsvg2-bin) or, failing that, ``cairosvg`` (pip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imchat.client import Connection
from imchat.client.session import ANNOUNCEMENTS, ChatSession, ConvKey, State
from imchat.tui.app import ChatApp
from imchat.tui.widgets import StatusBar

SIZE = (120, 36)
SMALL = (80, 24)


async def until(pilot: Any, cond: Callable[[], bool], timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError("the staged chat did not arrive in time")
        await pilot.pause(0.05)


async def user(port: int, nick: str, *rooms: str, token: str | None = None) -> Connection:
    conn = await Connection.connect("127.0.0.1", port)
    await conn.hello(nick, token=token)
    for room in rooms:
        await conn.request("join", room=room)
    return conn


def to_png(svg: Path) -> Path | None:
    """Convert with the fonts this machine has: the SVG's webfont is not reachable offline,
    and the fallback font may draw no-break spaces with no width, so use plain spaces."""
    png = svg.with_suffix(".png")
    fixed = svg.read_text().replace("&#160;", " ").replace("<svg ", '<svg xml:space="preserve" ', 1)
    fixed = re.sub(
        r'font-family: "Fira Code", monospace',
        'font-family: "DejaVu Sans Mono", "Fira Code", monospace',
        fixed,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as tmp:
        tmp.write(fixed)
    try:
        if shutil.which("rsvg-convert"):
            subprocess.run(["rsvg-convert", "-w", "1800", tmp.name, "-o", str(png)], check=True)
            return png
        try:
            import cairosvg  # type: ignore[import-not-found]
        except ImportError:
            print("no rsvg-convert or cairosvg: SVG only", file=sys.stderr)
            return None
        cairosvg.svg2png(url=tmp.name, write_to=str(png), output_width=1800)
        return png
    finally:
        Path(tmp.name).unlink()


async def main(out: Path) -> None:
    from imchat.server.app import ChatServer
    from imchat.server.config import ServerConfig

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        server = ChatServer(
            ServerConfig(
                port=0,
                data_dir=Path(data),
                rate=0,
                motd="Welcome to the imchat demo server. Be kind; logs are kept for 30 days.",
            )
        )
        await server.start()
        port = server.port
        token = (Path(data) / "admin.token").read_text().strip()
        bob = await user(port, "bob", "lobby", "dev")
        carol = await user(port, "carol", "lobby", "dev", "random")
        dave = await user(port, "dave", "lobby")
        erin = await user(port, "erin", "lobby")
        await bob.request("topic", room="lobby", text="v0.2 release today · notes in docs/")
        for who, text in [
            (bob, "morning all ☕"),
            (carol, "morning! the new reconnect logic survived the night soak test"),
            (dave, "nice. anything I should look at before the release?"),
            (erin, "the TUI snapshot tests are green on my machine"),
            (bob, "careful: [bold red]this is not markup[/bold red] and that's fine"),
        ]:
            await who.request("say", room="lobby", text=text)
        await carol.request("say", room="dev", text="pushed the history pagination fix")

        session = ChatSession("alice", "127.0.0.1", port, rooms=["lobby", "dev"])
        app = ChatApp(session, server_label=f"127.0.0.1:{port}", cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: session.state is State.CONNECTED and ConvKey.room("dev") in app.views
            )
            await pilot.press("alt+1")
            await dave.request("say", room="lobby", kind="action", text="grabs a coffee")
            await carol.request(
                "say",
                room="lobby",
                text="alice: could you review the member list PR? it also "
                "marks who is online, and long lines wrap under the text",
            )
            await erin.request("part", room="lobby")
            await carol.request("say", room="dev", text="CI is green again")
            await bob.request("dm", to="alice", text="lunch at 12:30? the usual place")
            admin = await user(port, "admin", token=token)
            await admin.request(
                "announce", text="server restarts at 18:00 UTC for an upgrade (about 1 minute)"
            )
            await until(
                pilot, lambda: ConvKey.dm("bob") in app.views and ANNOUNCEMENTS in app.views
            )
            await pilot.press(*"sure, looking now")
            await pilot.pause(0.3)
            app.save_screenshot("imchat-main.svg", str(out))
            app.clear_notifications()
            # The DM, after answering it.
            await pilot.press("ctrl+u")
            await pilot.press("alt+3")
            await pilot.press(*"yes! see you there", "enter")
            await until(pilot, lambda: not session.outbox)
            await pilot.pause(0.3)
            app.save_screenshot("imchat-dm.svg", str(out))
            # Help output.
            await pilot.press("alt+1")
            app.handle_line("/help")
            await pilot.pause(0.3)
            app.save_screenshot("imchat-help.svg", str(out))
            # Search in the lobby, with news waiting elsewhere (the hotlist on top).
            await carol.request("say", room="dev", text="alice: the release notes need you")
            await until(pilot, lambda: bool(app.query_one(StatusBar).hotlist.plain))
            app.handle_line("/search review")
            await pilot.pause(0.3)
            app.save_screenshot("imchat-search.svg", str(out))
            await pilot.press("escape")
            # A small terminal.
            await pilot.resize_terminal(*SMALL)
            await pilot.pause(0.5)
            app.save_screenshot("imchat-80x24.svg", str(out))
            await session.close()
        for conn in (bob, carol, dave, erin, admin):
            await conn.close()
        await server.stop()
    for svg in sorted(out.glob("imchat-*.svg")):
        png = to_png(svg)
        print(svg, png or "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    out = parser.parse_args().out
    # The staged users' resume secrets and DM partners are not the person's running this.
    with tempfile.TemporaryDirectory(prefix="imchat-screenshots-") as state:
        os.environ["IMCHAT_STATE_DIR"] = state
        asyncio.run(main(out))
