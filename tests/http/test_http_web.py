"""``imchat web``: the terminal client in headless Chromium, talking to a native client.

Skipped unless Chromium (Debian's ``chromium``, at /usr/bin/chromium) and the ``playwright``
package are installed; playwright drives that Chromium and downloads no browser. Leaves
``screenshots/imchat-web.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import PRESENCE, Clients, free_port, join, next_event, subprocess_env

from imchat.web import is_loopback

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path(__file__).parents[2] / "screenshots" / "imchat-web.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class WebProcess:
    """``imchat web`` in its own process group (it starts one client process per tab)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imchat", "web", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=subprocess_env(COLUMNS="200"),
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Serving" in line:
                self.serving.set()
        self.serving.set()  # it ended: stop waiting

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def port_of(args: tuple[str, ...]) -> int:
    return int(args[args.index("--web-port") + 1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """textual-serve says "Serving" before it binds: wait until the port takes connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def web_process() -> Iterator[Any]:
    started: list[WebProcess] = []

    def start(*args: str) -> WebProcess:
        web = WebProcess(*args)
        started.append(web)
        assert web.serving.wait(30), "".join(web.lines)
        wait_listening(port_of(args))
        assert web.proc.poll() is None, "".join(web.lines)
        return web

    yield start
    for web in started:
        web.stop()


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.1")


def test_binding_elsewhere_warns_and_requires_a_token() -> None:
    """192.0.2.1 (TEST-NET) is no local address: binding fails after the warning is out."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imchat",
            "web",
            "--nick",
            "alice",
            "--bind",
            "192.0.2.1",
            "--web-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(COLUMNS="200"),
        timeout=60,
    )
    assert "WARNING" in result.stderr and "reachable from other machines" in result.stderr
    assert "?token=" in result.stderr
    assert result.returncode != 0


async def test_token_gate(web_process: Any) -> None:
    port = free_port()
    web_process("--nick", "alice", "--web-port", str(port), "--web-token", "s3cret")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(base + "/") as response:
            assert response.status == 401
        async with client.get(base + "/?token=wrong") as response:
            assert response.status == 401
        async with client.get(base + "/static/js/textual.js") as response:
            assert response.status == 401
        async with client.get(base + "/?token=s3cret&fontsize=14", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "/?fontsize=14"
            assert "HttpOnly" in r.headers["Set-Cookie"]
        async with client.get(base + "/?fontsize=14") as response:  # the cookie now
            assert response.status == 200
            assert "imchat" in await response.text()


async def test_other_sites_cannot_drive_the_client(server: Any, web_process: Any) -> None:
    """On loopback no token is asked, so the browser must be the user's own page: any site
    the user visits could open a WebSocket to it (browsers allow that across origins, saying
    whose page it is in Origin) and drive the chat client as the user, and a DNS name rebound
    to 127.0.0.1 could load the page itself. A foreign Origin or Host is refused with 403."""
    port = free_port()
    web_process("--nick", "alice", "--port", str(server.port), "--web-port", str(port))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(base + "/ws", origin="http://evil.example")
        assert refused.value.status == 403
        async with client.get(base + "/", headers={"Host": f"rebound.example:{port}"}) as r:
            assert r.status == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            async with client.get(base + "/", headers={"Host": host}) as response:
                assert response.status == 200
        async with client.get(base + "/", headers={"Origin": base}) as response:
            assert response.status == 200


@pytest.mark.timeout(120)
async def test_browser_message_reaches_a_native_client(
    server: Any, connect: Clients, web_process: Any
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    bob = await connect("bob")
    await join(bob, "lobby")
    port = free_port()
    web_process("--nick", "alice", "--port", str(server.port), "--web-port", str(port))
    async with playwright_api.async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(Path(os.environ.get("TMPDIR", "/tmp")) / f"imchat-chromium-{port}"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 720},
        )
        try:
            page = await context.new_page()
            response = await page.goto(f"http://127.0.0.1:{port}/")
            assert response is not None and response.status == 200
            # The page started a client: alice joins lobby, as bob sees.
            joined = await next_event(bob, "joined", timeout=60)
            assert joined["nick"] == "alice"
            # Keys go to xterm.js's hidden textarea (a click would land in the TUI and move
            # its focus off the input line).
            await page.locator("textarea").first.focus()
            await page.keyboard.type("hello from chromium")
            await page.keyboard.press("Enter")
            # (The client says it is typing as the keys go in: not what this waits for.)
            msg = await next_event(bob, "msg", skip=PRESENCE | {"typing"}, timeout=30)
            assert (msg["from"], msg["text"]) == ("alice", "hello from chromium")
            await bob.request("say", room="lobby", text="hi alice, seen from the terminal")
            await next_event(bob, "msg", skip=PRESENCE | {"typing"})
            # xterm.js paints on a canvas, so there is no text to wait for: the test's outcome
            # is decided above; this pause only lets the picture show the reply.
            await page.wait_for_timeout(1500)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))
        finally:
            await context.close()
