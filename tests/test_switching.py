"""The server's GIL switch interval: set while it serves, the process's own once it stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from imchat.client import Connection
from imchat.server.app import ChatServer
from imchat.server.config import ServerConfig
from imchat.server.switching import SWITCH_INTERVAL


async def test_a_serving_server_lets_its_writer_thread_have_the_gil_within_a_millisecond(
    tmp_path: Path,
) -> None:
    previous = sys.getswitchinterval()
    assert previous != SWITCH_INTERVAL  # CPython's 5 ms, or this test could not fail
    server = ChatServer(ServerConfig(port=0, data_dir=tmp_path, rate=0, addr_rate=0))
    serving = asyncio.create_task(server.serve_forever())
    while server.port == 0:  # listening: start() has run
        await asyncio.sleep(0)
    conn = await Connection.connect("127.0.0.1", server.port)
    await conn.hello("alice")
    await conn.request("join", room="lobby")
    await conn.request("say", room="lobby", text="committed by the writer thread")
    assert sys.getswitchinterval() == SWITCH_INTERVAL
    await conn.close()
    os.kill(os.getpid(), signal.SIGTERM)  # as an operator stops it
    await asyncio.wait_for(serving, 30)
    assert sys.getswitchinterval() == previous
