"""A line-level IRC test client and an ``imchat server --irc-port 0`` subprocess.

Tests synchronise on lines (a numeric, a PRIVMSG), never on sleeps: :meth:`IrcClient.expect`
reads until a line matches and fails after a timeout, keeping everything it read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from imchat.server.irc.lines import Line, parse_line

TIMEOUT = 5.0
IRC_AT = re.compile(r"serving IRC at (\S+):(\d+)")


@dataclass
class Received:
    raw: bytes
    line: Line

    @property
    def command(self) -> str:
        return self.line.command

    @property
    def params(self) -> list[str]:
        return self.line.params


class IrcClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[Received] = []
        self._pending: list[Received] = []
        self.nick = "*"

    @classmethod
    async def open(cls, port: int) -> IrcClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line.encode() if isinstance(line, str) else line
            self.writer.write(data + b"\r\n")

    async def recv(self, timeout: float = TIMEOUT) -> Received:
        if self._pending:
            return self._pending.pop(0)
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        if not raw or (not raw.endswith(b"\n") and self.reader.at_eof()):
            raise EOFError("server closed the connection")  # (an aborted one: mid-line)
        assert raw.endswith(b"\r\n"), raw
        got = Received(raw, parse_line(raw[:-2]))
        self.seen.append(got)
        if got.command == "PING":
            self.send("PONG :" + got.line.param(0))
        return got

    async def expect(
        self, match: str | Callable[[Received], bool], timeout: float = TIMEOUT
    ) -> Received:
        """The next line whose command is ``match`` (or that satisfies it); earlier lines
        are skipped but kept in :attr:`seen`."""
        test = match if callable(match) else (lambda r: r.command == match)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {match} line; saw {[r.raw for r in self.seen[-20:]]}")
            got = await self.recv(remaining)
            if test(got):
                return got

    async def until(self, command: str, timeout: float = TIMEOUT) -> list[Received]:
        """Every line up to and including the next ``command`` line."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            got = await self.recv(max(deadline - time.monotonic(), 0.001))
            out.append(got)
            if got.command == command:
                return out

    async def register(
        self, nick: str, *, caps: str = "", password: str | None = None
    ) -> list[Received]:
        """CAP LS/REQ/END (if ``caps``), PASS, NICK, USER; returns the lines up to 376/422."""
        if caps:
            self.send("CAP LS 302")
        if password is not None:
            self.send(f"PASS {password}")
        self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        if caps:
            self.send(f"CAP REQ :{caps}")
            ack = await self.expect(lambda r: r.command == "CAP" and r.params[1] in ("ACK", "NAK"))
            assert ack.params[1] == "ACK", ack.raw
            self.send("CAP END")
        lines = []
        while True:
            got = await self.recv()
            lines.append(got)
            if got.command in ("376", "422"):
                self.nick = nick
                return lines
            if got.command in ("433", "432", "464", "ERROR"):
                raise AssertionError(got.raw)

    async def join(self, channel: str) -> list[Received]:
        self.send(f"JOIN {channel}")
        return await self.until("366")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)

    async def closed(self, timeout: float = TIMEOUT) -> list[Received]:
        """Every line until the server closes the connection."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(await self.recv(max(deadline - time.monotonic(), 0.001)))
            except EOFError:
                return out


def sasl_plain(account: str, secret: str) -> str:
    return base64.b64encode(f"{account}\0{account}\0{secret}".encode()).decode()
