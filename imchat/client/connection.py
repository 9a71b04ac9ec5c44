"""An asyncio connection to an imchat server: requests matched to replies, a stream of events.

Used by ``imchat send``, the TUI and the tests. It owns no policy (no reconnects, no
retries); :mod:`imchat.client` layers those on top.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from typing import Any

from imchat.protocol import (
    CLIENT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    ProtocolError,
    Request,
    decode_object,
    encode_message,
)

Message = dict[str, Any]
DEFAULT_PORT = 7667


class ServerError(Exception):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionClosed(Exception):
    """The connection ended; ``error`` is the server's last error frame, if it sent one."""

    def __init__(self, error: Message | None = None) -> None:
        reason = f"{error.get('code')}: {error.get('message')}" if error else "connection closed"
        super().__init__(reason)
        self.error = error


class Connection:
    """One protocol session over TCP (or TLS)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        #: Events (frames without an id, and error frames without one) in arrival order.
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.welcome: Message | None = None
        self.closed_error: Message | None = None
        #: The server as the caller named it (keys the guest ``resume`` secrets).
        self.host = ""
        self.port = 0
        self._closed = asyncio.Event()
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl, limit=CLIENT_MAX_FRAME), timeout
        )
        conn = cls(reader, writer)
        conn.host, conn.port = host, port
        return conn

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def hello(
        self,
        nick: str,
        *,
        password: str | None = None,
        token: str | None = None,
        client: str | None = None,
        resume: str | None = None,
    ) -> Message:
        """Send ``hello``; the ``welcome``. A hello that fails (an ``error`` reply, the
        connection lost, the caller cancelling) ends the connection before raising: a
        Connection is for one session, so nothing is left for the caller to close."""
        hello = Hello(
            proto=PROTOCOL_VERSION,
            nick=nick,
            password=password,
            token=token,
            client=client,
            resume=resume,
        )
        try:
            self.welcome = await self.request(hello)
        except asyncio.CancelledError:
            self.abort()  # the reader sees the end and finishes on its own
            raise
        except BaseException:
            # Refused (``bad_nick``, ``nick_taken``: the server keeps the connection) or
            # lost: the connection is of no use any more, and a caller that drops it
            # without ``close()`` must not leave its read task pending.
            self.abort()
            await asyncio.gather(self._reader_task, return_exceptions=True)
            raise
        return self.welcome

    async def request(self, message: Request | str, /, **fields: Any) -> Message:
        """Send a request and return its ``ok``/``welcome``/``pong`` reply.

        Raises :class:`ServerError` for an ``error`` reply and :class:`ConnectionClosed` if the
        connection ends first.
        """
        rid = next(self._ids)
        if isinstance(message, str):
            body: Any = {"type": message, **fields, "id": rid}
        else:
            message.id = rid
            body = message
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self.send_raw(encode_message(body))
            reply = await future
        finally:
            self._pending.pop(rid, None)
        if reply.get("type") == "error":
            raise ServerError(str(reply.get("code")), str(reply.get("message", "")))
        return reply

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests use this to send malformed frames)."""
        if self._closed.is_set():
            raise ConnectionClosed(self.closed_error)
        self._writer.write(data)

    async def next_event(self, timeout: float | None = None) -> Message:
        """The next event; raises :class:`ConnectionClosed` once none can come any more."""
        get = asyncio.ensure_future(self.events.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait(
                {get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting = [f for f in (get, closed) if not f.done()]
            for future in waiting:
                future.cancel()
            if waiting:
                # Let them finish being cancelled: a task still being cancelled when its loop
                # closes is garbage later ("Exception ignored in Queue.get").
                await asyncio.wait(waiting)
        if get in done:
            return get.result()
        if not done:
            raise TimeoutError("no event within timeout")
        raise ConnectionClosed(self.closed_error)

    async def close(self) -> None:
        """Say ``bye`` and wait for the server to close (or just close if it is gone)."""
        if not self._closed.is_set():
            try:
                self.send_raw(encode_message({"type": "bye"}))
                await asyncio.wait_for(self._closed.wait(), 5)
            except (ConnectionClosed, ConnectionError, TimeoutError):
                pass
        self.abort()
        await asyncio.gather(self._reader_task, return_exceptions=True)

    def abort(self) -> None:
        self._writer.close()

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(CLIENT_MAX_FRAME)
        try:
            while data := await self._reader.read(65536):
                for payload in decoder.feed(data):
                    self._dispatch(decode_object(payload))
        except (ConnectionError, ProtocolError, OSError):
            pass
        finally:
            self._closed.set()
            self._writer.close()
            error = ConnectionClosed(self.closed_error)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)

    def _dispatch(self, message: Message) -> None:
        rid = message.get("id")
        future = self._pending.get(rid) if isinstance(rid, int) else None
        if future is not None and not future.done():
            future.set_result(message)
            return
        if message.get("type") == "error" and "id" not in message:
            # An error without id is the server's last word (or a reply to a request whose
            # id it refused); either way it is an event the caller should see.
            self.closed_error = message
        self.events.put_nowait(message)
