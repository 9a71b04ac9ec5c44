"""One IRC connection, seen by the hub as a native session.

Each IRC command becomes native requests (JSON payloads with an ``id`` this session tracks)
handed to ``hub.handle_batch``; replies come back through :meth:`IrcSession.send` and are
routed to the command that asked, synchronously, so their lines leave before any event the
request caused. Every other frame is an event, translated through the server-wide
:class:`~.translate.FrameCache` (a broadcast is formatted once for all IRC recipients).

Output bounds, the slow-consumer cut-off, rate limits and idle timeouts are the native
session's: this class only replaces how bytes are read and how frames are written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from imchat.protocol import ErrorCode, ProtocolError

from ..session import Session
from . import translate as tr
from .commands import Commands
from .lines import MAX_TOTAL, BadLine, Line, LineDecoder, LineTooLong, format_parts, parse_line
from .sent import SentHere

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger(__name__)

#: Unhandled input an IRC session may hold before it stops reading its socket.
INPUT_BUDGET = 4 * MAX_TOTAL
#: Lines queued before reading pauses.
MAX_QUEUED_LINES = 256
#: Commands whose runs are handed to the hub together (one store commit per run).
BATCHED = frozenset({"PRIVMSG", "NOTICE"})

Reply = dict[str, Any] | ProtocolError
OnReply = Callable[[Reply], None]

_encoder = msgspec.json.Encoder()


class IrcShared:
    """What all IRC sessions of one server share: the translation cache."""

    def __init__(self) -> None:
        self.cache = tr.FrameCache()


class IrcSession(Session):
    __slots__ = (
        "_next_id",
        "_ping_timer",
        "_registration_waiters",
        "cache",
        "caps",
        "cmd",
        "echo",
        "held_rooms",
        "lines",
        "prebuffer",
        "queue",
        "queued_bytes",
        "registered",
        "sent",
        "shared",
        "skip_author",
        "user_key",
        "variant",
        "waiting",
    )

    def __init__(self, hub: Hub, shared: IrcShared) -> None:
        super().__init__(hub)
        # An IRC client cannot carry the ``resume`` secret: nothing to hold its guest
        # identity for once it disconnects (docs/irc.md, "Identities").
        self.guest_hold = 0.0
        self.shared = shared
        self.cache = shared.cache
        #: The user's nick key once registered.
        self.user_key = ""
        #: Whose room messages may be kept from this client: its user's, unless echo-message
        #: (and of those only the ones it sent itself, :attr:`sent`).
        self.skip_author = ""
        #: What this client sent itself: without echo-message, not sent back to it.
        self.sent = SentHere()
        #: Rooms whose events wait while a JOIN's replay is read: their lines, in order.
        self.held_rooms: dict[str, list[bytes]] = {}
        self.lines = LineDecoder()
        self.queue: list[bytes | LineTooLong] = []
        self.queued_bytes = 0
        self.caps: set[str] = set()
        self.variant = 0
        #: echo-message was negotiated: the client sees its own messages as stored.
        self.echo = False
        self.registered = False
        #: Lines for events that arrived before registration finished (after a SASL hello).
        self.prebuffer: list[bytes] = []
        self.waiting: dict[int, OnReply] = {}
        #: :meth:`wait_written` futures of an unregistered client (settled after CAP END).
        self._registration_waiters: list[asyncio.Future[bool]] = []
        self._next_id = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self.cmd = Commands(self)

    # -- input -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._schedule_ping()
        deadline = self.hub.config.hello_timeout
        if deadline > 0:
            # The hub's sweep closes sessions without a user; one that logged in by SASL has
            # a user before its registration ends (CAP END), so registration has its own.
            self.hub.loop.call_later(deadline, self._check_registered, deadline)

    def _check_registered(self, deadline: float) -> None:
        if not self.registered and not self.closing:
            message = f"registration not completed within {deadline:g} s"
            self.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))

    @property
    def held(self) -> int:
        return self.queued_bytes + self.lines.buffered

    @property
    def input_budget(self) -> int:
        return INPUT_BUDGET

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.hub.loop.time()
        if self.closing:
            return
        for item in self.lines.feed(data):
            self.queue.append(item)
            if isinstance(item, bytes):
                self.queued_bytes += len(item)
        if len(self.queue) > MAX_QUEUED_LINES or self.held >= self.input_budget:
            self._pause_reading()
        if not self._busy and self.queue:
            self._busy = True
            self.hub.spawn(self._process())

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.queue and not self._busy and not self.closing:
            self._busy = True
            self.hub.spawn(self._process())

    def eof_received(self) -> bool:
        self._eof = True
        if not self._busy and not self.queue:
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle_registration_waiters(None)
        self.queue.clear()
        self.queued_bytes = 0
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        super().connection_lost(exc)

    async def _process(self) -> None:
        queue = self.queue
        try:
            while queue and not self.closing and not self._writing_paused:
                batch = queue[:]
                queue.clear()
                size = sum(len(item) for item in batch if isinstance(item, bytes))
                self._resume()
                await self._handle_lines(batch)
                self.queued_bytes -= size
                self._resume()
        except Exception:
            log.exception("internal error on IRC connection %s", self.peer)
            self.fail(ProtocolError(ErrorCode.INTERNAL, "internal server error"))
        finally:
            self._busy = False
        if self._eof and not queue:
            self.close()

    def _resume(self) -> None:
        if (
            self._reading_paused
            and not self.closing
            and len(self.queue) <= MAX_QUEUED_LINES
            and self.held < self.input_budget
        ):
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    async def _handle_lines(self, batch: list[bytes | LineTooLong]) -> None:
        run: list[tuple[Line, list[bytes]]] = []
        for item in batch:
            if self.closing:
                return
            try:
                if isinstance(item, LineTooLong):
                    raise item
                line = parse_line(item)
            except BadLine as exc:
                await self._flush_run(run)
                self._bad_line(exc)
                continue
            if line.command in BATCHED and self.registered:
                payloads = self.cmd.message_payloads(line)
                if payloads:
                    run.append((line, payloads))
                continue
            await self._flush_run(run)
            await self.cmd.dispatch(line)
        await self._flush_run(run)

    async def _flush_run(self, run: list[tuple[Line, list[bytes]]]) -> None:
        if run:
            payloads = [p for _, ps in run for p in ps]
            run.clear()
            await self.hub.handle_batch(self, list(payloads))

    def _bad_line(self, exc: BadLine) -> None:
        if isinstance(exc, LineTooLong):
            self.send_line(tr.numeric("417", self.nick_or_star, exc.message))
        else:
            self.send_line(tr.fail("*", exc.code, exc.message))

    # -- native requests -------------------------------------------------------------------

    def payload(self, body: dict[str, Any], on_reply: OnReply) -> bytes:
        """A native request whose reply goes to ``on_reply`` (called as it is sent)."""
        rid = self._next_id
        self._next_id += 1
        self.waiting[rid] = on_reply
        body["id"] = rid
        return _encoder.encode(body)

    async def request(self, body: dict[str, Any], on_reply: OnReply) -> None:
        await self.hub.handle_batch(self, [self.payload(body, on_reply)])

    async def ask(self, body: dict[str, Any]) -> Reply:
        """A native request; its reply (``ok`` body or the error) returned."""
        box: list[Reply] = []
        await self.request(body, box.append)
        if not box:
            return ProtocolError(ErrorCode.INTERNAL, "connection closing")
        return box[0]

    # -- output ----------------------------------------------------------------------------

    def send_line(self, data: bytes) -> None:
        """Queue IRC bytes (one or more lines) through the native output buffer."""
        Session.send(self, data)

    def send(self, frame: bytes) -> None:
        """A native frame for this client: a reply to route, or an event to translate."""
        cache = self.cache
        entry = cache.last if frame is cache.last_frame else cache.get(frame)
        if entry.simple and self.registered:
            # The broadcast path: no decoding, no formatting, one dict lookup.
            if entry.author == self.skip_author and self.sent.take(
                "#" + str(entry.event.get("room")), entry.event.get("seq")
            ):
                return
            lines = entry.lines[self.variant] or entry.for_variant(self.variant)
            if self.held_rooms and self._hold(entry.event, lines):
                return
            Session.send(self, lines)
            return
        if self.closing:
            return
        event = entry.event
        rid = event.get("id")
        if rid is not None and type(rid) is int:
            callback = self.waiting.pop(rid, None)
            if callback is not None:
                if event.get("type") == "error":
                    callback(ProtocolError(_code(event.get("code")), str(event.get("message"))))
                else:
                    callback(event)
                return
        data = self.cmd.event_out(entry)
        if data and not (self.held_rooms and self._hold(event, data)):
            self.send_event(data)

    def hold_room(self, room: str) -> None:
        """Keep the room's events back (a JOIN's replay is being read; they come after it)."""
        self.held_rooms.setdefault(room, [])

    def release_room(self, room: str) -> None:
        """Send what :meth:`hold_room` kept back, in the order it came."""
        for data in self.held_rooms.pop(room, ()):
            self.send_event(data)

    def _hold(self, event: dict[str, Any], data: bytes) -> bool:
        room = event.get("room")
        held = self.held_rooms.get(room) if isinstance(room, str) else None
        if held is None:
            return False
        held.append(data)
        return True

    def note_sent(self, target: str, reply: dict[str, Any]) -> None:
        """The ``ok`` of a message this client sent to ``target``: without echo-message its
        event is not sent back to it (the client showed the message as it sent it)."""
        if not self.echo:
            self.sent.add(target, reply)

    def send_event(self, data: bytes) -> None:
        if self.registered:
            Session.send(self, data)
            return
        self.prebuffer.append(data)
        if sum(map(len, self.prebuffer)) > self.hub.config.max_buffer:
            self.fail(ProtocolError(ErrorCode.SLOW_CONSUMER, "registration never completed"))

    def send_error(self, error: ProtocolError) -> None:
        rid = error.request_id
        callback = self.waiting.pop(rid, None) if type(rid) is int else None
        if callback is not None and not error.fatal:
            callback(error)
        elif error.fatal:
            if callback is not None:
                callback(error)
            self.fail(error)
        else:
            self.send_line(tr.fail("*", str(error.code).upper(), error.message))

    def _error_frame(self, error: ProtocolError) -> bytes:  # type: ignore[override]
        return format_parts("ERROR", [f"Closing link: {error.message} ({error.code})"])

    def finish_registration(self) -> None:
        assert self.user is not None
        self.user_key = self.user.key
        self.caps_changed()
        self.registered = True
        held, self.prebuffer = self.prebuffer, []
        for data in held:
            Session.send(self, data)
        if self._registration_waiters:
            self._settle_registration_waiters(Session.wait_written(self))

    def wait_written(self) -> asyncio.Future[bool]:
        """As a native session's; but what a client logged in by SASL is sent before its
        registration ends waits in ``prebuffer``, so it counts as written only once it has
        gone out after CAP END. A client gone before then took nothing with it: the DMs it
        was owed stay queued for the user's next session."""
        if self.registered or self.closing:
            return Session.wait_written(self)
        future: asyncio.Future[bool] = self.hub.loop.create_future()
        self._registration_waiters.append(future)
        return future

    def _settle_registration_waiters(self, written: asyncio.Future[bool] | None) -> None:
        """Hand the waiters of :meth:`wait_written` the outcome of ``written`` (None: the
        connection ended unregistered, nothing was written)."""
        waiters, self._registration_waiters = self._registration_waiters, []
        for future in waiters:
            if written is None:
                if not future.done():
                    future.set_result(False)
                continue

            def settle(done: asyncio.Future[bool], future: asyncio.Future[bool] = future) -> None:
                if not future.done():
                    future.set_result(not done.cancelled() and done.result())

            written.add_done_callback(settle)

    def caps_changed(self) -> None:
        """Derive what the send path reads from the negotiated capabilities."""
        self.echo = "echo-message" in self.caps
        self.variant = (
            (tr.TIME if "server-time" in self.caps else 0)
            | (tr.MSGTAGS if "message-tags" in self.caps else 0)
            | (tr.REDACT if "draft/message-redaction" in self.caps else 0)
        )
        self.skip_author = "" if self.echo else self.user_key

    @property
    def nick_or_star(self) -> str:
        return self.user.nick if self.user is not None else (self.cmd.reg_nick or "*")

    # -- keepalive -------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        timeout = self.hub.config.idle_timeout
        if timeout > 0:
            self._ping_timer = self.hub.loop.call_later(timeout / 3, self._maybe_ping)

    def _maybe_ping(self) -> None:
        if self.closing:
            return
        timeout = self.hub.config.idle_timeout
        if self.registered and self.last_rx < self.hub.loop.time() - timeout / 3:
            Session.send(self, format_parts("PING", [tr.SERVER]))
        self._schedule_ping()


def _code(value: object) -> ErrorCode:
    try:
        return ErrorCode(str(value))
    except ValueError:
        return ErrorCode.INTERNAL


class AdmittedIrcSession(IrcSession):
    """An IRC session the TLS port's :class:`imchat.server.listener.Listener` admitted:
    counted against its address's limit at accept, before its handshake."""

    __slots__ = ()
    admitted = True
