"""Servers under test as subprocesses: start, wait until they listen, read CPU and memory, stop.

Measurements come from ``/proc/PID/stat`` (user + system CPU seconds) and
``/proc/PID/status`` (``VmRSS`` now, ``VmHWM`` peak), so no extra dependency is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU time a process's threads have run so far, to the nanosecond.

    ``/proc/<pid>/stat`` counts in clock ticks (10 ms): a server busy for 0.3 s of a run
    reads within ±3 % there, and a figure summed over three nodes within ±10 %. The
    scheduler's own count (``/proc/<pid>/task/*/schedstat``, the first field) is exact; a
    thread that exited is no longer in it, which a server's long-lived threads never do.
    Where the kernel keeps no such count (it reads 0), the ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    if total:
        return total / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (from ``/proc/stat``), to spot a noisy machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for servers that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` prefixed with ``taskset -c CPU`` (taskset execs, so the PID stays the server's)."""
    if cpu is None:
        return list(argv)
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("taskset not found (util-linux); run with --no-pin")
    return [taskset, "-c", str(cpu), *argv]


class ServerProc:
    """One server subprocess with its log file; ``port`` is known once :meth:`start` returns."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        port: int | None = None,
        port_from_log: Callable[[str], int | None] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.port = port
        self._port_from_log = port_from_log
        self._env = env
        self._cwd = cwd
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 20.0) -> int:
        """Launch and wait until the server accepts a TCP connection; returns the port."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if self.port is None and self._port_from_log is not None:
                self.port = self._port_from_log(self.log_path.read_text(errors="replace"))
            if self.port is not None and await _accepts(self.port):
                return self.port
            await asyncio.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        return process_cpu_seconds(self.pid)

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_kb(self) -> int:
        return self._status_kb("VmRSS")

    def hwm_kb(self) -> int:
        """Peak resident set size."""
        return self._status_kb("VmHWM")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


_LISTENING = re.compile(r"listening on \S+:(\d+)")


def imchat_command() -> list[str]:
    """The ``imchat`` of this interpreter's environment, as an argv prefix."""
    exe = Path(sys.executable).with_name("imchat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imchat.cli"]


#: Every benchmark client comes from 127.0.0.1: the per-address budgets (messages, reads, new
#: guests, new rooms) and the guests' room-creation budget would measure those limits.
LOOPBACK_CROWD = (
    "--addr-rate",
    "0",
    "--addr-guests-per-minute",
    "0",
    "--addr-rooms-per-minute",
    "0",
    "--guest-rooms-per-minute",
    "0",
    "--addr-read-rate",
    "0",
)


def delete_prefix(url: str, prefix: str) -> None:
    """Remove the keys a benchmark's servers left under ``prefix`` in the Redis at ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def imchat_server(
    data_dir: Path, log_path: Path, cpu: int | None, extra: Sequence[str] = ()
) -> ServerProc:
    """``imchat server`` on an ephemeral port, rate limit off, history on (the default);
    ``extra``: more options (e.g. ``--redis URL --redis-prefix P`` for a cluster node)."""
    argv = [
        *imchat_command(),
        "server",
        "--host",
        HOST,
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--rate",
        "0",
        *LOOPBACK_CROWD,
        *extra,
    ]
    env = dict(os.environ)
    # Receivers never send: keep them from being closed as idle during long runs.
    env.setdefault("IMCHAT_IDLE_TIMEOUT", "3600")
    # Every client comes from 127.0.0.1: lift the per-address connection limit.
    env.setdefault("IMCHAT_MAX_CONNECTIONS_PER_IP", "0")

    def port_from_log(text: str) -> int | None:
        match = _LISTENING.search(text)
        return int(match.group(1)) if match else None

    return ServerProc(
        "imchat",
        pinned(argv, cpu),
        log_path=log_path,
        port_from_log=port_from_log,
        env=env,
        data_dir=data_dir,
    )


async def quiet(
    nodes: list[ServerProc], limit: float, busy: float = 0.02, step: float = 1.0
) -> float:
    """Until the nodes together used under ``busy`` of a core over ``step`` seconds (joins
    and disconnects settled), or ``limit`` seconds (a node that never settles does not stall
    the run). Returns the wait."""
    start = time.monotonic()
    last = sum(n.cpu_seconds() for n in nodes)
    while time.monotonic() < start + limit:
        await asyncio.sleep(step)
        now = sum(n.cpu_seconds() for n in nodes)
        if now - last < busy * step:
            break
        last = now
    return time.monotonic() - start
