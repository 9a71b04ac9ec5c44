"""The IRC side of the comparison: InspIRCd and miniircd as subprocesses, and an IRC client.

The workload is the same as imchat's: NICK/USER, JOIN a channel, one sender PRIVMSGing it.
Receivers count lines (newlines) without splitting them; probes also scan the chunk's whole
lines for the marks in the texts (timestamps, sequence numbers), as imchat's probes do.
PINGs are answered so long runs are not cut off.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from time import monotonic_ns

from loadgen import BaseClient, Driver, Mode
from serverproc import HOST, ServerProc, free_port, pinned


class IrcClient(BaseClient):
    """One IRC connection; lines are counted, not parsed, once it has joined."""

    _expect: bytes = b""

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.raw_bytes += len(data)
        mode = self.mode
        if mode is Mode.DISCARD:
            if b"PING" in data:
                self._pong(data)
            return
        if self._rest:
            data = self._rest + data
        if mode is Mode.DECODE:
            lines = data.split(b"\n")
            self._rest = lines.pop()
            for line in lines:
                self._line(line.rstrip(b"\r"))
            return
        end = data.rfind(b"\n") + 1
        self._rest = data[end:]
        # Whole lines only: a PING split across reads is answered (and not counted) once.
        pings = self._pong(data[:end]) if data.find(b"PING", 0, end) >= 0 else 0
        if self.probe:
            self._scanned(data, end, monotonic_ns())
        if stats.counting:
            self._counted(data.count(b"\n", 0, end) - pings)

    def _pong(self, data: bytes) -> int:
        n = 0
        for line in data.split(b"\n"):
            if _is_ping(line):
                token = line.rstrip(b"\r").rsplit(b" ", 1)[-1]
                self.write(b"PONG " + token + b"\r\n")
                n += 1
        return n

    def _line(self, line: bytes) -> None:
        if _is_ping(line):
            self._pong(line)
            return
        parts = line.split(b" ", 3)
        if line.startswith(b"ERROR"):
            self._resolve(exc=RuntimeError(line.decode(errors="replace")))
        elif len(parts) >= 2:
            code = parts[1]
            if code == self._expect:
                self._resolve(line)
            elif code in (b"432", b"433", b"436", b"403", b"405", b"471", b"473", b"474"):
                self._resolve(exc=RuntimeError(line.decode(errors="replace")))

    async def _expect_reply(self, code: bytes, timeout: float) -> None:
        self._expect = code
        await self._await_reply(timeout)

    async def handshake(
        self, nick: str, rooms: Sequence[str], timeout: float, token: str | None = None
    ) -> None:
        self.write(b"NICK %s\r\nUSER %s 0 * :%s\r\n" % ((nick.encode(),) * 3))
        await self._expect_reply(b"001", timeout)
        for room in rooms:
            self.write(b"JOIN %s\r\n" % room.encode())
            await self._expect_reply(b"366", timeout)  # end of NAMES: the join is complete

    def say(self, room: str, text: str, rid: int | None = None, sent_ns: int = 0) -> None:
        self.write(b"PRIVMSG %s :%s\r\n" % (room.encode(), text.encode()))


def _is_ping(line: bytes) -> bool:
    return line.startswith(b"PING ") or (line.startswith(b":") and b" PING " in line[:80])


class IrcDriver(Driver):
    client_cls = IrcClient
    # InspIRCd completes registrations on its once-a-second timer: connect many at once.
    parallel = 1000

    def room(self, name: str) -> str:
        return "#" + name


class MiniircdDriver(IrcDriver):
    # miniircd multiplexes with select(), which cannot watch descriptors >= 1024.
    max_connections = 1015
    parallel = 4  # its listen backlog is 5


_INSPIRCD_CONF = """\
<server name="bench.local" description="imchat benchmark peer" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
<connect name="bench" allow="127.0.0.0/8" maxchans="1000" timeout="120" pingfreq="3600"
         hardsendq="256M" softsendq="256M" recvq="64M" threshold="1000000000"
         commandrate="1000000000" fakelag="no" localmax="1000000" globalmax="1000000"
         maxconnwarn="no" resolvehostnames="no" useident="no" limit="1000000">
<performance netbuffersize="65536" somaxconn="4096" softlimit="30000" clonesonconnect="no"
             quietbursts="yes" timeskipwarn="0">
<dns server="127.0.0.1" timeout="1">
<pid file="{tmp}/inspircd.pid">
<files motd="{tmp}/motd.txt">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{tmp}/inspircd.log">
<options prefixquit="Quit: " syntaxhints="no" announcets="no" hostintopic="no">
<security hideserver="" userstats="Pu" maxtargets="20">
<whowas groupsize="0" maxgroups="0" maxkeep="1">
"""


def inspircd_server(tmp: Path, log_path: Path, cpu: int | None) -> ServerProc:
    """InspIRCd on 127.0.0.1 with flood limits off, no DNS or ident lookups, high limits."""
    exe = shutil.which("inspircd") or "/usr/sbin/inspircd"
    if not Path(exe).exists():
        raise RuntimeError("inspircd not installed (apt-get install -y inspircd)")
    port = free_port()
    (tmp / "motd.txt").write_text("imchat benchmark\n")
    conf = tmp / "inspircd.conf"
    conf.write_text(_INSPIRCD_CONF.format(port=port, tmp=tmp))
    argv = [exe, "--config", str(conf), "--nofork", "--runasroot"]
    return ServerProc("inspircd", pinned(argv, cpu), log_path=log_path, port=port, cwd=tmp)


def miniircd_server(tmp: Path, log_path: Path, cpu: int | None) -> ServerProc:
    """miniircd (pure Python, select()-based) on 127.0.0.1."""
    if importlib.util.find_spec("miniircd") is None:
        raise RuntimeError("miniircd not installed (pip install miniircd)")
    port = free_port()
    argv = [sys.executable, "-m", "miniircd", "--listen", HOST, "--ports", str(port)]
    if os.geteuid() == 0:
        argv += ["--setuid", "root"]  # it refuses to run as root otherwise
    return ServerProc("miniircd", pinned(argv, cpu), log_path=log_path, port=port, cwd=tmp)
