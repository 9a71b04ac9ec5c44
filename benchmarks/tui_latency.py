"""Keystroke-to-screen latency of ``imchat join`` in a real pseudo-terminal, and the cost of a
presence storm.

    .venv/bin/python benchmarks/tui_latency.py [--keys 200] [--users 200] [--rate 20]

A real ``imchat server`` subprocess and a real ``imchat join`` subprocess on a pty (120x36,
TERM=xterm-256color). A key is written to the pty and the clock stops when the terminal
output shows it: the input line repainted with one more ``Ж`` than before (a character no
other text on screen contains). That is what a person sees, Textual's input thread, event
loop, compositor and output writer included. Scenarios:

* idle: an open lobby with a little history;
* loaded: while ``--users`` users join the lobby one by one over the run and ``--rate``
  messages a second arrive there;
* quit storm: ``--users`` members of the lobby quit at once; the client's CPU seconds
  (from /proc) from the quit until the client is idle again, and how long that took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import platform
import pty
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serverproc import HOST, imchat_server, process_cpu_seconds

from imchat.client import Connection

KEY = "Ж"
KEY_BYTES = KEY.encode()
COLS, ROWS = 120, 36


class Terminal:
    """``imchat join`` on a pty; collects everything it writes."""

    def __init__(self, port: int, nick: str, workdir: Path) -> None:
        config = workdir / "config.toml"
        config.write_text("")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the client
            env = dict(os.environ, TERM="xterm-256color", IMCHAT_CONFIG=str(config))
            exe = Path(sys.executable).with_name("imchat")
            os.execve(
                str(exe),
                [str(exe), "join", "--nick", nick, "--host", HOST, "--port", str(port)],
                env,
            )
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        os.set_blocking(self.fd, False)
        self.output = bytearray()
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self.output += os.read(self.fd, 1 << 16)
            self.changed.set()

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    async def wait_for(self, needle: bytes, start: int = 0, timeout: float = 30.0) -> float:
        """Wait until ``needle`` appears in the output after offset ``start``."""
        deadline = time.perf_counter() + timeout
        while needle not in self.output[start:]:
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                text = bytes(self.output).decode(errors="replace")
                tail = text[text.rfind("Ж") - 300 : text.rfind("Ж") + 300]
                raise TimeoutError(f"{needle.decode()!r} did not appear; output ends: {tail!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return time.perf_counter()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 15)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


async def keystrokes(term: Terminal, count: int, per_line: int = 40) -> list[float]:
    """Latency of ``count`` keys, clearing the input (Ctrl+U) every ``per_line`` keys."""
    times = []
    typed = 0
    for _ in range(count):
        if typed == per_line:
            term.write("\x15")  # Ctrl+U: clear the line
            typed = 0
            await asyncio.sleep(0.1)
        start_at = len(term.output)
        start = time.perf_counter()
        term.write(KEY)
        typed += 1
        end = await term.wait_for(KEY_BYTES * typed, start_at)
        times.append(end - start)
        await asyncio.sleep(0.02)  # a fast typist: 50 keys a second at most
    term.write("\x15")
    await asyncio.sleep(0.3)
    return times


def report(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    median = statistics.median(ms)
    return f"{label:<36} median {median:6.2f} ms   p95 {p95:6.2f} ms   max {ms[-1]:6.2f} ms"


async def user(port: int, nick: str) -> Connection:
    conn = await Connection.connect(HOST, port)
    await conn.hello(nick)
    await conn.request("join", room="lobby")
    return conn


async def idle_client(term: Terminal, seconds: float = 1.0) -> float:
    """Wait until the client uses under 2 % CPU over ``seconds``; returns when that began."""
    while True:
        before, at = term.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(seconds)
        if term.cpu_seconds() - before < 0.02 * seconds:
            return at


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        (workdir / "data").mkdir()
        server = imchat_server(workdir / "data", workdir / "server.log", None)
        port = await server.start()
        talker = await user(port, "talker")
        for i in range(20):
            await talker.request("say", room="lobby", text=f"history line {i}")
        term = Terminal(port, "typist", workdir)
        try:
            await term.wait_for(b"connected")
            await term.wait_for(b"history line 19")
            await asyncio.sleep(1.0)
            print(
                f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
            )
            idle = await keystrokes(term, args.keys)
            print(report("keystroke, idle", idle))

            # Loaded: users join one by one and messages arrive at --rate while we type.
            joiners: list[Connection] = []
            stop = asyncio.Event()

            async def joins() -> None:
                gap = args.join_seconds / args.users
                for i in range(args.users):
                    if stop.is_set():
                        return
                    joiners.append(await user(port, f"joiner{i}"))
                    await asyncio.sleep(gap)

            async def chatter() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    await talker.request("say", room="lobby", text=f"load message {n}")
                    await asyncio.sleep(1 / args.rate)

            tasks = [asyncio.create_task(joins()), asyncio.create_task(chatter())]
            loaded = await keystrokes(term, args.keys)
            stop.set()
            await asyncio.gather(*tasks)
            print(
                report(f"keystroke, {len(joiners)} joining + {args.rate} msg/s", loaded)
                + f"   ({len(joiners)} joined during the run)"
            )
            while len(joiners) < args.users:
                joiners.append(await user(port, f"joiner{len(joiners)}"))
            await term.wait_for(f"members {args.users + 2}".encode(), timeout=60)
            await idle_client(term)

            # Quit storm: every joiner's connection closes at once.
            cpu0, t0 = term.cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(c.close() for c in joiners), return_exceptions=True)
            settled = await idle_client(term, 0.5)
            cpu = term.cpu_seconds() - cpu0
            print(
                f"{len(joiners)} users quit at once: client CPU {cpu:.2f} s, "
                f"busy for {settled - t0:.2f} s"
            )
        finally:
            term.close()
            await talker.close()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument(
        "--join-seconds", type=float, default=8.0, help="spread the joins over this long"
    )
    asyncio.run(main(parser.parse_args()))
