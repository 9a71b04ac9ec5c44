"""Stage replies, reactions, an edit, a delete and someone typing; save a screenshot of it.

    .venv/bin/python screenshots/make_feature_screenshot.py [--out screenshots]

Writes ``imchat-features.svg`` (and ``.png``, see ``make_screenshots.to_png``): an in-process
server on 127.0.0.1, scripted users on the client library, the TUI headless at 120x36.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshots import SIZE, to_png, until, user

from imchat.client.session import ChatSession, ConvKey, State
from imchat.tui.app import ChatApp

LOBBY = ConvKey.room("lobby")


async def main(out: Path) -> None:
    from imchat.server.app import ChatServer
    from imchat.server.config import ServerConfig

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        server = ChatServer(ServerConfig(port=0, data_dir=Path(data), rate=0))
        await server.start()
        port = server.port
        bob = await user(port, "bob", "lobby")
        carol = await user(port, "carol", "lobby")
        dave = await user(port, "dave", "lobby")
        await bob.request("topic", room="lobby", text="release day")
        q = await bob.request("say", room="lobby", text="is the v0.3 changelog ready?")
        typo = await carol.request("say", room="lobby", text="almsot: two more entries")
        await carol.request("edit", room="lobby", seq=typo["seq"], text="almost: two more entries")
        await dave.request("say", room="lobby", text="I can take the docs part", reply_to=q["seq"])
        gone = await dave.request("say", room="lobby", text="(wrong window, sorry)")
        await dave.request("delete", room="lobby", seq=gone["seq"])
        ship = await bob.request("say", room="lobby", text="shipping at 16:00 then 🚀")
        for who, emoji in ((carol, "👍"), (dave, "👍"), (carol, "🎉")):
            await who.request("react", room="lobby", seq=ship["seq"], emoji=emoji)

        session = ChatSession("alice", "127.0.0.1", port, rooms=["lobby"])
        app = ChatApp(session, server_label=f"127.0.0.1:{port}", cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: session.state is State.CONNECTED and LOBBY in app.views)
            app.handle_line("/react 👍")
            await pilot.pause(0.3)
            await pilot.press("enter")  # the newest message: bob's "shipping"
            await until(
                pilot,
                lambda: any("👍 3" in line for line in app.views[LOBBY].log_widget.plain_lines()),
            )
            await bob.request("typing", room="lobby")
            await pilot.press(*"great, thanks all")
            await pilot.pause(0.5)
            app.save_screenshot("imchat-features.svg", str(out))
            await session.close()
        for conn in (bob, carol, dave):
            await conn.close()
        await server.stop()
    svg = out / "imchat-features.svg"
    print(svg, to_png(svg) or "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    asyncio.run(main(parser.parse_args().out))
