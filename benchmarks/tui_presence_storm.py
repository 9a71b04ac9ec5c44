"""What does a presence storm cost the TUI? 200 users join a room, then all quit at once.

    .venv/bin/python benchmarks/tui_presence_storm.py [--users 200] [--settle 8]

Starts ``imchat server`` and ``imchat join`` as subprocesses, the client in a real
pseudo-terminal (120x36) whose output is read and thrown away, as a terminal would. Then
USERS library clients join the client's room; once that has settled they all close at
once. Reported: the CPU seconds of the ``imchat join`` process from the moment they close
until SETTLE seconds later (its idle cost over the same time is measured first and shown,
so the difference is the storm's).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

from serverproc import HOST, imchat_server, process_cpu_seconds

from imchat.client import Connection


def spawn_tui(port: int, cols: int = 120, rows: int = 36) -> tuple[subprocess.Popen[bytes], int]:
    """``imchat join`` on a pty; returns the process and the master fd to drain."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    exe = Path(sys.executable).with_name("imchat")
    argv = [str(exe), "join", "--nick", "watcher", "--host", HOST, "--port", str(port)]
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
    proc = subprocess.Popen(
        [*argv, "--room", "lobby"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    return proc, master


async def drain(master: int) -> None:
    """Read the terminal's output as fast as it comes (a terminal never blocks the app)."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(master, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                os.read(master, 1 << 16)
            except OSError:
                return
    finally:
        loop.remove_reader(master)


async def main(users: int, settle: float) -> None:
    with tempfile.TemporaryDirectory(prefix="tui-storm-") as tmp:
        server = imchat_server(Path(tmp) / "data", Path(tmp) / "server.log", None)
        (Path(tmp) / "data").mkdir()
        port = await server.start()
        tui, master = spawn_tui(port)
        drainer = asyncio.create_task(drain(master))
        try:
            await asyncio.sleep(3)  # the client starts, connects and joins
            idle_before = process_cpu_seconds(tui.pid)
            await asyncio.sleep(settle)
            idle = process_cpu_seconds(tui.pid) - idle_before
            conns = []
            start = process_cpu_seconds(tui.pid)
            for n in range(users):
                conn = await Connection.connect(HOST, port)
                await conn.hello(f"storm{n}")
                await conn.request("join", room="lobby")
                conns.append(conn)
            await asyncio.sleep(settle)
            joined = process_cpu_seconds(tui.pid) - start
            start = process_cpu_seconds(tui.pid)
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
            await asyncio.sleep(settle)
            quit_cost = process_cpu_seconds(tui.pid) - start
            print(f"idle for {settle:.0f} s:                          {idle:.2f} s CPU")
            print(f"{users} users join (one by one) + {settle:.0f} s:        {joined:.2f} s CPU")
            print(f"{users} users quit at once + {settle:.0f} s:          {quit_cost:.2f} s CPU")
        finally:
            drainer.cancel()
            tui.terminate()
            tui.wait(10)
            os.close(master)
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.settle))
