"""Plain text sent to a TLS port: told so in the port's own language, then closed.

A user who types ``http://`` for the HTTPS port, or runs ``imchat send`` or an IRC client
without TLS against a TLS port, would otherwise see the connection drop with no word why
(curl: "Empty reply from server"). Like nginx, each TLS port looks at the first byte a
connection sends before TLS begins: every TLS handshake record starts with 0x16 (an SSLv2
style hello with a set high bit, which OpenSSL then refuses itself, is left to it too).
Anything else is not TLS, and the port answers what it can tell unambiguously:

- the HTTPS port: ``400 Bad Request`` in plain text, whatever the bytes were;
- the IRC TLS port: an IRC ``ERROR`` line, whatever the bytes were;
- the native TLS port: an ``error`` frame (``bad_frame``) when the first byte is 0x00, the
  high byte of a native frame's length (a client's frame is never 16 MiB long); any other
  byte is closed without a word, as before.

Nothing of what the client sent is kept: one byte is peeked (or the first read is looked at
and dropped), the reply is the same few bytes whatever came, and what follows is read and
dropped only so that closing does not reset the connection before the reply arrives (a
"lingering close", as nginx's): until the client closes, at most :data:`LINGER_BYTES`, at
most :data:`LINGER_SECONDS` and never beyond the handshake deadline. The connection keeps
its place against ``max_connections_per_ip`` until then, as any handshake does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import cast

from imchat.protocol import encode_message

#: The first byte of every TLS record that starts a handshake.
TLS_HANDSHAKE_RECORD = 0x16
#: Bytes read and dropped after the reply at most, while waiting for the client to close.
LINGER_BYTES = 65536
#: Seconds to wait for the client to close after the reply at most.
LINGER_SECONDS = 2.0

_HTTP_BODY = b"400 Bad Request: plain HTTP request sent to the HTTPS port; use https://\n"
HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_HTTP_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + _HTTP_BODY
)
IRC_REPLY = (
    b"ERROR :Closing link: plain connection to a TLS port; connect with TLS "
    b"(e.g. WeeChat -tls, irssi -tls)\r\n"
)
NATIVE_REPLY = encode_message(
    {
        "type": "error",
        "code": "bad_frame",
        "message": "plain connection to a TLS port; connect with TLS (--tls)",
    }
)


def starts_tls(first: int) -> bool:
    """Whether a connection whose first byte is ``first`` may be starting TLS."""
    return first == TLS_HANDSHAKE_RECORD or first >= 0x80


def http_reply(first: int) -> bytes:
    return HTTP_REPLY


def irc_reply(first: int) -> bytes:
    return IRC_REPLY


def native_reply(first: int) -> bytes | None:
    return NATIVE_REPLY if first == 0 else None


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    """Until ``sock`` has something to read (data, an end, an error); TimeoutError after
    ``timeout`` seconds."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            await ready
    finally:
        loop.remove_reader(sock.fileno())


async def peek_first_byte(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float
) -> int | None:
    """The first byte ``sock`` will read, left unread (None: the client closed first).

    TimeoutError at ``deadline`` (loop time), OSError if the connection failed.
    """
    while True:
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock, deadline - loop.time())
            continue
        return first[0] if first else None


async def refuse(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, reply: bytes | None, deadline: float
) -> None:
    """Send ``reply`` (if any) on a connection that is not TLS, then read and drop what
    comes until the client closes, within the bounds above. The caller closes ``sock``."""
    if reply is None:
        return
    try:
        sock.send(reply)  # a few bytes into an empty send buffer: never partial
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    end = min(deadline, loop.time() + LINGER_SECONDS)
    dropped = 0
    with contextlib.suppress(OSError, TimeoutError):
        while dropped < LINGER_BYTES:
            try:
                data = sock.recv(4096)  # dropped at once: nothing is kept
            except (BlockingIOError, InterruptedError):
                await _readable(loop, sock, end - loop.time())
                continue
            if not data:
                return
            dropped += len(data)


class Refusal(asyncio.Protocol):
    """The same for a connection that is a transport already (the HTTPS port's): the reply,
    then what comes is dropped until the client closes, within the same bounds;
    ``ended()`` when the connection is gone."""

    def __init__(self, reply: bytes, deadline: float, ended: Callable[[], None]) -> None:
        self.reply = reply
        self.deadline = deadline
        self.ended = ended
        self.dropped = 0
        self._raw: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = self._raw = cast(asyncio.Transport, transport)
        raw.write(self.reply)
        if raw.can_write_eof():
            raw.write_eof()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(min(self.deadline, loop.time() + LINGER_SECONDS), raw.abort)

    def data_received(self, data: bytes) -> None:
        self.dropped += len(data)
        if self.dropped >= LINGER_BYTES and self._raw is not None:
            self._raw.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.ended()
