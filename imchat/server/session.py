"""One client connection: bytes in through the frame decoder, bytes out through a bounded buffer.

Requests of one session are handled strictly in order (a reply never overtakes an earlier
one, and the events a request causes follow its reply); different sessions proceed
independently. Output is coalesced: frames queued during one turn of the event loop leave in
one write. A session that owes its client more than ``max_buffer`` bytes is cut off with
``slow_consumer`` instead of slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from imchat.protocol import ErrorCode, FrameDecoder, ProtocolError, encode_message

if TYPE_CHECKING:
    from .fanout import User
    from .hub import Hub

log = logging.getLogger(__name__)

#: Frames read ahead of the one being handled before the session stops reading its socket.
MAX_INBOX = 64
#: How long a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0


class Session(asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_inbox",
        "_out",
        "_out_size",
        "_reading_paused",
        "bucket",
        "closing",
        "decoder",
        "hub",
        "last_rx",
        "peer",
        "transport",
        "user",
    )

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.decoder = FrameDecoder(hub.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.user: User | None = None
        self.bucket = hub.new_bucket()
        self.closing = False
        self.last_rx = hub.loop.time()
        self._inbox: list[bytes | ProtocolError] = []
        self._busy = False
        self._reading_paused = False
        self._out: list[bytes] = []
        self._out_size = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.hub.session_opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.hub.loop.time()
        if self.closing:
            return
        inbox = self._inbox
        try:
            for payload in self.decoder.feed(data):
                inbox.append(payload)
        except ProtocolError as exc:
            # Framing is lost: answer the frames before the fault, then report it and close.
            inbox.append(exc)
            self._pause_reading()
        if len(inbox) > MAX_INBOX:
            self._pause_reading()
        if not self._busy and inbox:
            self._busy = True
            self.hub.spawn(self._process())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._out.clear()
        self.hub.session_closed(self, exc)

    # -- requests --------------------------------------------------------------------------

    async def _process(self) -> None:
        inbox = self._inbox
        try:
            while inbox and not self.closing:
                batch = inbox[:]
                inbox.clear()
                if self._reading_paused and not isinstance(batch[-1], ProtocolError):
                    self._reading_paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                await self.hub.handle_batch(self, batch)
        finally:
            self._busy = False

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- output ----------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame; it is written with the others at the end of this loop turn."""
        if self.closing:
            return
        if not self._out:
            self.hub.mark_dirty(self)
        self._out.append(frame)
        self._out_size += len(frame)
        assert self.transport is not None
        # Only what earlier writes left unsent counts: the frames queued during this loop turn
        # were never offered to the client, so it cannot have fallen behind on them.
        if self.transport.get_write_buffer_size() > self.hub.config.max_buffer:
            self.fail(ProtocolError(ErrorCode.SLOW_CONSUMER, "client is not reading fast enough"))

    def flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            out = self._out
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._out = []
        self._out_size = 0

    def fail(self, error: ProtocolError) -> None:
        """Send a fatal error as the last frame and close."""
        if self.closing:
            return
        log.info("closing %s (%s): %s %s", self.peer, self.nick, error.code, error.message)
        if error.code == ErrorCode.SLOW_CONSUMER:
            # What it owes is in history; sending more would only grow the backlog.
            self._out.clear()
        self.close(self._error_frame(error))

    def close(self, last_frame: bytes | None = None) -> None:
        """Flush what is owed (plus ``last_frame``) and close; abort if the peer won't read."""
        if self.closing or self.transport is None:
            return
        if last_frame is not None:
            self._out.append(last_frame)
        self.flush()
        self.closing = True
        transport = self.transport
        transport.close()
        self.hub.loop.call_later(CLOSE_GRACE, transport.abort)

    @staticmethod
    def _error_frame(error: ProtocolError) -> bytes:
        body: dict[str, object] = {"type": "error"}
        if error.request_id is not None:
            body["id"] = error.request_id
        body["code"] = str(error.code)
        body["message"] = error.message
        return encode_message(body)

    def send_error(self, error: ProtocolError) -> None:
        if error.fatal:
            self.fail(error)
        else:
            self.send(self._error_frame(error))

    @property
    def nick(self) -> str:
        return self.user.nick if self.user is not None else "-"
