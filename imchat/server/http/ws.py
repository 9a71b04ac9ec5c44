"""``/ws``: the native protocol over WebSocket, one JSON object per text message.

A :class:`WsSession` is a full session to the hub (``hello``, rooms, presence, idle timeout,
credential re-checks, ``shutting_down``): only the transport differs from the TCP one. Its
output is bounded the same way: a client that owes more than ``max_buffer`` bytes (queued here
plus unsent in the socket) is cut off with ``slow_consumer``. Input is read one message at a
time into a small inbox; requests wait while the client is behind on reading its replies, so
a peer that only sends is served no faster than it reads.

Differences forced by WebSocket: a message over ``max_frame`` closes the connection with
close code 1009 (aiohttp refuses it before it is read, so no ``error`` object precedes it);
a binary message is ``bad_frame``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from imchat.protocol import HEADER_SIZE, ErrorCode, ProtocolError, encode_message
from imchat.protocol.events import ErrorReply
from imchat.server.ratelimit import address_key
from imchat.server.stats import STATS

if TYPE_CHECKING:
    from imchat.server.hub import Hub
    from imchat.server.peer import Credential, User

    from .app import HttpFrontend

log = logging.getLogger(__name__)

#: Messages read ahead of the batch being handled before reading stops.
MAX_INBOX = 64
#: Replies queued and unsent above which requests wait for the client to read.
OUTPUT_HIGH_WATER = 64 * 1024
#: How long a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0
#: While someone waits in :meth:`WsSession.wait_written`, how often the socket is looked at.
WRITTEN_POLL = 0.05


def routes(front: HttpFrontend) -> list[web.RouteDef]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await serve(front.hub, request)

    return [web.get("/ws", handler)]


class WsSession:
    """The hub's view of one WebSocket client (the attributes it uses of any session)."""

    protocol = "websocket"

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.hub = hub
        self.ws = ws
        self.raw = request.transport
        remote = request.remote or "?"
        self.peer = f"ws:{remote}"
        self.addr = address_key(remote)
        self.user: User | None = None
        self.credential: Credential | None = None
        self.guest_hold: float | None = None
        self.bucket = hub.new_bucket()
        self.read_bucket = hub.new_read_bucket()
        self.closing = False
        #: Set at shutdown: no more requests are taken (those read are still answered).
        self.paused = False
        self.last_rx = self.opened = hub.loop.time()
        self.inbox: list[bytes | ProtocolError] = []
        self.busy = False
        self._room = asyncio.Event()
        self._room.set()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        #: Waiters of :meth:`wait_written`.
        self._written: list[asyncio.Future[bool]] = []

    # -- output ----------------------------------------------------------------------------

    def unsent(self) -> int:
        """Bytes owed to the client: queued here, and written but still in the socket."""
        buffered = self.raw.get_write_buffer_size() if self.raw is not None else 0
        return self._out_bytes + buffered

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        if self.unsent() > self.hub.config.max_buffer:
            self.fail(ProtocolError(ErrorCode.SLOW_CONSUMER, "client is not reading fast enough"))
            return
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._drained.clear()
        self._wake.set()

    def send_error(self, error: ProtocolError) -> None:
        if error.fatal:
            self.fail(error)
        else:
            self.send(_error_frame(error))

    def fail(self, error: ProtocolError) -> None:
        if self.closing:
            return
        log.info("closing %s (%s): %s %s", self.peer, self.nick, error.code, error.message)
        if error.code == ErrorCode.SLOW_CONSUMER:
            STATS.slow_consumers += 1
            self._out.clear()  # what it owes is in history
            self._out_bytes = 0
        self.close(_error_frame(error))

    def close(self, last_frame: bytes | None = None) -> None:
        """Send what is owed (plus ``last_frame``), then close; abort if the peer won't read."""
        if self.closing:
            return
        if last_frame is not None:
            self._queue(last_frame)
        self.closing = True
        self._wake.set()
        self.hub.loop.call_later(CLOSE_GRACE, self.abort)

    def flush(self) -> None:
        pass  # the writer task sends as soon as frames are queued

    def pause_reading(self) -> None:
        self.paused = True

    def abort(self) -> None:
        if self.raw is not None and not self.raw.is_closing():
            self.raw.abort()

    async def write_loop(self) -> None:
        """Hands queued frames to the socket, one WebSocket message each; closes when told."""
        ws = self.ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    frame = self._out.popleft()
                    self._out_bytes -= len(frame)
                    await ws.send_frame(frame[HEADER_SIZE:], WSMsgType.TEXT)
                    STATS.deliveries += 1
                self._drained.set()
                if self.closing:
                    await ws.close()
                    return
        except (ConnectionError, RuntimeError):
            self._drained.set()  # the peer is gone: nothing is owed any more

    def wait_written(self) -> asyncio.Future[bool]:
        """True once what is queued now has left this process for the client (sent by the
        writer and out of the socket's buffer); False if the connection ends first. (The
        trust-core branch adds this to ``Peer``: a queued DM leaves its queue only once
        written.)"""
        future: asyncio.Future[bool] = self.hub.loop.create_future()
        if self.closing:
            future.set_result(False)
            return future
        self._written.append(future)
        if len(self._written) == 1:
            self._check_written()
        return future

    def _check_written(self) -> None:
        if not self._written:
            return
        if self.closing:
            self._settle_written(False)
        elif not self._out and (self.raw is None or self.raw.get_write_buffer_size() == 0):
            self._settle_written(True)
        else:
            self.hub.loop.call_later(WRITTEN_POLL, self._check_written)

    def _settle_written(self, written: bool) -> None:
        waiters, self._written = self._written, []
        for future in waiters:
            if not future.done():
                future.set_result(written)

    # -- input -----------------------------------------------------------------------------

    def receive(self, item: bytes | ProtocolError) -> None:
        self.last_rx = self.hub.loop.time()
        self.inbox.append(item)
        if len(self.inbox) >= MAX_INBOX:
            self._room.clear()
        if not self.busy:
            self.busy = True
            self.hub.spawn(self._process())

    async def room(self) -> None:
        """Wait until the inbox has room for another message."""
        await self._room.wait()

    async def _process(self) -> None:
        try:
            while self.inbox and not self.closing:
                if self._out_bytes > OUTPUT_HIGH_WATER:
                    await self._drained.wait()  # the client reads its replies first
                    continue
                batch = [self.inbox.pop(0)] if self.user is None else self.inbox[:]
                if self.user is not None:
                    self.inbox.clear()
                self._room.set()
                await self.hub.handle_batch(self, batch)
        finally:
            self.busy = False
            self._room.set()

    @property
    def nick(self) -> str:
        return self.user.nick if self.user is not None else "-"


def _error_frame(error: ProtocolError) -> bytes:
    return encode_message(ErrorReply.of(error))


async def serve(hub: Hub, request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        max_msg_size=hub.config.max_frame,
        compress=False,  # deflate costs CPU per message and invites decompression bombs
        decode_text=False,
        timeout=CLOSE_GRACE,
    )
    await ws.prepare(request)
    session = WsSession(hub, ws, request)
    hub.session_opened(session)
    writer = asyncio.create_task(session.write_loop())
    try:
        while not session.closing:
            await session.room()
            message = await ws.receive()
            if message.type == WSMsgType.TEXT:
                if not session.paused:  # shutting down: shutting_down follows shortly
                    session.receive(message.data)
            elif message.type == WSMsgType.BINARY:
                session.fail(ProtocolError(ErrorCode.BAD_FRAME, "send JSON as text messages"))
            else:  # closing, closed or a protocol error (1009: message too big)
                break
        if not session.closing:
            session.close()
        await asyncio.wait_for(asyncio.shield(writer), CLOSE_GRACE * 2)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        session.closing = True
        session._settle_written(False)
        writer.cancel()
        session.abort()
        hub.session_closed(session, None)
    return ws
