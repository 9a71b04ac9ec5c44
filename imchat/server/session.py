"""One client connection: bytes in through the frame decoder, bytes out through a bounded buffer.

Requests of one session are handled strictly in order (a reply never overtakes an earlier
one, and the events a request causes follow its reply); different sessions proceed
independently. Output is coalesced: frames queued during one turn of the event loop leave in
one write. A session that owes its client more than ``max_buffer`` bytes is cut off with
``slow_consumer`` instead of slowing anyone else down.

Input is bounded by bytes, not only by frames: the session reads its socket into a buffer it
sizes itself (``asyncio.BufferedProtocol``), never more than its input budget has room for,
and stops reading when the budget is spent. Frames count against the budget until they are
handled. Before ``hello`` the budget is one largest frame. Requests are not handled while the
transport's write buffer is above its high-water mark, so a peer that sends without reading
its replies is not served faster than it reads: what the server holds for an unidentified
peer stays within ``max_frame`` of input plus a few tens of kilobytes of output.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import sys
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, cast

from imchat.protocol import (
    HEADER_SIZE,
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    encode_message,
    split_frames,
)
from imchat.protocol.events import ErrorReply

from .ratelimit import TokenBucket, address_key
from .registry import MEMORY_PER_BYTE_OWED, Registry
from .stats import STATS

if TYPE_CHECKING:
    from .hub import Hub
    from .peer import Credential, Peer, User

log = logging.getLogger(__name__)

#: Frames read ahead of the one being handled before the session stops reading its socket.
MAX_INBOX = 64
#: Input bytes (unhandled frames and a partial one) an identified session may hold, in
#: largest frames; before ``hello`` it is one.
INBOX_FRAMES = 4
#: Replies queued by requests handled before ``hello`` that are written out at once.
FLUSH_AT = 65536
#: Seconds between looks at whether a client's TCP stack acknowledged what it was sent.
WRITTEN_POLL = 0.02
#: Linux's SIOCOUTQ: bytes in a socket's send queue the peer has not acknowledged.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


def _unacknowledged(transport: asyncio.Transport) -> int:
    """Bytes sent to the peer but not yet acknowledged by it (0 where unknown)."""
    sock = transport.get_extra_info("socket")
    if SIOCOUTQ is None or sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


#: How long a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0

#: What :attr:`Session.opened` becomes once the session has a user (at the idle sweep's next
#: :meth:`Session.rest`): only the hello timeout reads it, and only before ``hello``.
LOGGED_IN = float("-inf")

#: The last value a session stored in ``last_rx``: sessions that read at the same loop time
#: (uvloop's clock ticks in milliseconds) share one float object instead of one each.
_rx_time: list[float] = [0.0]

#: Waiters of :meth:`Session.wait_written` by session, kept out of the session (no slot per
#: idle session for what DM delivery alone uses, now and then); an entry lives until its
#: waiters are settled, at the latest when the connection is lost.
_written: dict[Session, list[asyncio.Future[bool]]] = {}


class Session(asyncio.BufferedProtocol):
    """A native-protocol connection: a :class:`imchat.server.peer.Peer` over TCP (or TLS)."""

    __slots__ = (
        "_bucket",
        "_busy",
        "_eof",
        "_inbox",
        "_inbox_bytes",
        "_out",
        "_peer",
        "_read_bucket",
        "_reading_paused",
        "_writing_paused",
        "addr",
        "closing",
        "credential",
        "decoder",
        "guest_hold",
        "hub",
        "last_rx",
        "opened",
        "transport",
        "user",
    )

    #: Counted against the per-address limit when accepted (see :mod:`.listener`): the
    #: listener makes :class:`AdmittedSession`; a class attribute, not a slot (idle memory).
    admitted: ClassVar[bool] = False
    #: :meth:`send_frames` queues a run's bytes as one entry: False for a subclass with a
    #: :meth:`send` of its own (the IRC adapter translates each frame), set per class.
    _sends_runs: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._sends_runs = cls.send is Session.send

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.guest_hold: float | None = None
        #: Holds a frame still arriving, and a lost framing; None while neither (nearly every
        #: read holds whole frames: they are split straight out of it, and an idle session
        #: holds no decoder and no buffer).
        self.decoder: FrameDecoder | None = None
        self.transport: asyncio.Transport | None = None
        #: The remote end: its port alone when its host is :attr:`addr` (an IPv4 client: the
        #: interned string every session of the address shares), else "host:port" (see
        #: :attr:`peer`; 32 bytes less per idle session than a string each).
        self._peer: str | int = "?"
        #: The unit of per-address limits: the client's IPv4 address or IPv6 /64.
        self.addr = "?"
        self.user: User | None = None
        #: How it logged in, re-checked while it lasts (see :mod:`imchat.server.authn`).
        self.credential: Credential | None = None
        #: Its rate limit, made when first needed: most idle sessions never send a message.
        self._bucket: TokenBucket | None = None
        self._read_bucket: TokenBucket | None = None
        self.closing = False
        self.last_rx = self.opened = hub.loop.time()
        #: Frames received and not yet handled; None while there are none (idle memory).
        self._inbox: list[bytes | ProtocolError] | None = None
        #: Bytes of frames received and not yet handled (queued or in the batch being handled).
        self._inbox_bytes = 0
        self._busy = False
        #: The client finished sending (half-close): answer what it sent, then close.
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        #: Frames queued this loop turn: None when nothing is (no empty list per idle
        #: session), the frame itself when one is (no list per recipient of a broadcast).
        self._out: bytes | list[bytes] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = str(peer[0])
            self.addr = address_key(host)
            self._peer = (
                peer[1] if host == self.addr and isinstance(peer[1], int) else (f"{host}:{peer[1]}")
            )
        else:
            self._peer = str(peer)
            self.addr = address_key(self._peer)
        self.hub.session_opened(self)

    @property
    def peer(self) -> str:
        """The remote end, for logs ("host:port")."""
        peer = self._peer
        return peer if isinstance(peer, str) else f"{self.addr}:{peer}"

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never read more than the budget has room for; reading pauses once it is spent.
        room = self.input_budget - self.held
        return self.hub.read_buffer[: max(1, min(room, len(self.hub.read_buffer)))]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.hub.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        now = self.hub.loop.time()
        if now == _rx_time[0]:
            now = _rx_time[0]  # the same value, one float for every session (idle memory)
        else:
            _rx_time[0] = now
        self.last_rx = now
        if self.closing:
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        start = len(inbox)
        decoder = self.decoder
        max_frame = self.hub.config.max_frame
        try:
            if decoder is None:
                rest = split_frames(data, max_frame, inbox)
                self._inbox_bytes += rest  # the payloads and their headers
                if rest < len(data):
                    decoder = self.decoder = FrameDecoder(max_frame)
                    decoder.receive_data(data[rest:])
            else:
                inbox.extend(decoder.feed(data))
                self._count_inbox(start)
                if not decoder.partial:
                    self.decoder = None
        except ProtocolError as exc:
            # Framing is lost: answer the frames before the fault, then report it and close.
            if decoder is None:
                self._count_inbox(start)
                decoder = self.decoder = FrameDecoder(max_frame)
                decoder.lose(exc)
            inbox.append(exc)
            self._pause_reading()
        if len(inbox) > MAX_INBOX or self.held >= self.input_budget:
            self._pause_reading()
        if not self._busy and inbox:
            self._busy = True
            self.hub.spawn(self._process())

    def _count_inbox(self, start: int) -> None:
        """Count the frames appended to the inbox from ``start`` on against the budget."""
        inbox = self._inbox or []
        self._inbox_bytes += sum(
            len(item) + HEADER_SIZE for item in inbox[start:] if isinstance(item, bytes)
        )

    def eof_received(self) -> bool:
        # A client that half-closes (`printf … | nc -N`) still gets its replies.
        self._eof = True
        if not self._busy and not self._inbox:
            self.close()
        return True

    def wake(self) -> None:
        if self._inbox and not self._busy and not self.closing:
            self._busy = True
            self.hub.spawn(self._process())

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if _written and self in _written and not self._out and not self.closing:
            self._check_written()
        if self._inbox and not self._busy and not self.closing:
            self._busy = True
            self.hub.spawn(self._process())

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.registry.untrack_output(self)
        self.closing = True
        self._settle_written(False)
        self._out = None
        if self._inbox:
            self._inbox.clear()  # a batch being handled stops with it
        self._inbox = None
        self._inbox_bytes = 0
        self.hub.session_closed(self, exc)

    @property
    def bucket(self) -> TokenBucket:
        """Its message rate limit (a new bucket is full: the same as one made at connect)."""
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = self.hub.new_bucket()
            self.hub.registry.watched.add(self)  # until the sweep lets it go
        return bucket

    @property
    def read_bucket(self) -> TokenBucket:
        """Its read limit, made when first needed like :attr:`bucket`."""
        bucket = self._read_bucket
        if bucket is None:
            bucket = self._read_bucket = self.hub.new_read_bucket()
            self.hub.registry.watched.add(self)
        return bucket

    def rest(self) -> bool:
        """Let go of the rate-limit buckets once full again (an idle session then holds
        none; the next rate-limited request makes a new, full one: the same limit), and of
        the time it opened once it has a user (see :data:`LOGGED_IN`). True if it holds no
        bucket now: the sweep need not look at it again before its idle deadline."""
        if self._bucket is not None and self._bucket.full():
            self._bucket = None
        if self._read_bucket is not None and self._read_bucket.full():
            self._read_bucket = None
        if self.user is not None:
            # Only the hello timeout reads ``opened``, and only while there is no user: a
            # shared constant instead of a float per idle session (never None again).
            self.opened = LOGGED_IN
        return self._bucket is None and self._read_bucket is None

    @property
    def held(self) -> int:
        """Input bytes this session holds: unhandled frames and the partial one being read."""
        decoder = self.decoder
        return self._inbox_bytes + (decoder.buffered if decoder is not None else 0)

    @property
    def reading_paused(self) -> bool:
        """Reading from the socket is paused (the input budget or inbox is full)."""
        return self._reading_paused

    @property
    def writing_paused(self) -> bool:
        """The transport's write buffer is above its high-water mark: requests wait."""
        return self._writing_paused

    @property
    def owed(self) -> int:
        """Output bytes this session holds: queued frames plus the transport's write buffer."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.queued + buffered

    @property
    def queued(self) -> int:
        """Bytes queued this loop turn (counted when asked: rarely, unlike a send)."""
        out = self._out
        if out is None:
            return 0
        return sum(map(len, out)) if isinstance(out, list) else len(out)

    @property
    def input_budget(self) -> int:
        frame = self.hub.config.max_frame + HEADER_SIZE
        return frame if self.user is None else frame * INBOX_FRAMES

    # -- requests --------------------------------------------------------------------------

    async def _process(self) -> None:
        inbox = self._inbox
        try:
            while inbox and not self.closing and not self._writing_paused:
                if self.hub.registry.saturated():
                    # The server holds all the output it may: this waits until there is room.
                    self.hub.registry.wait_for_room(self)
                    break
                if self.user is None:
                    # Before hello nothing is batched (no messages yet): one request at a time,
                    # so the replies owed can be flushed, and backpressure applied, between them.
                    batch = [inbox.pop(0)]
                else:
                    batch = inbox[:]
                    inbox.clear()
                self._maybe_resume_reading()  # the next batch is read while this one is handled
                rest = await self.hub.handle_batch(self, batch)
                done = batch[: len(batch) - len(rest)]
                try:  # frames only (nearly always): counted in C, not an item at a time
                    self._inbox_bytes -= sum(
                        map(len, cast("list[bytes]", done))
                    ) + HEADER_SIZE * len(done)
                except TypeError:  # a lost framing's ProtocolError among them
                    self._inbox_bytes -= sum(
                        len(item) + HEADER_SIZE for item in done if isinstance(item, bytes)
                    )
                if rest:
                    # It owes more than max_buffer (send it now; the rest waits for the client
                    # to read: writing pauses above the high-water mark), or the server holds
                    # all the output it may (the loop's next turn waits for room).
                    inbox[:0] = rest
                    self.flush()
                if self.user is None and self.queued >= FLUSH_AT:
                    self.flush()  # may pause writing: the rest waits for the client to read
                self._maybe_resume_reading()
        finally:
            self._busy = False
            if not inbox and self._inbox is inbox:
                self._inbox = None  # all handled: an idle session holds no list
        if self._eof and not self._inbox:
            self.close()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self.closing
            and not (self.decoder is not None and self.decoder.failed)  # framing is lost
            and len(self._inbox or ()) <= MAX_INBOX
            and self.held < self.input_budget
        ):
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- output ----------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame; it is written with the others at the end of this loop turn.

        :func:`queue_all` for one session, inline (a reply's and a cluster delivery's path:
        a call and a tuple less)."""
        if self.closing:
            return
        out = self._out
        if out is None:
            self._out = frame  # a turn's one frame (a broadcast's usual case): no list
            registry = self.hub.registry
            dirty = registry.dirty
            if dirty:
                dirty.append(self)  # a flush is scheduled: mark_dirty, one call less
            else:
                registry.mark_dirty(self)
        elif isinstance(out, list):
            out.append(frame)
        else:
            self._out = [out, frame]

    def send_frames(self, frames: list[bytes], joined: bytes) -> bool:
        """Queue several frames (``joined``: the same bytes, concatenated) in one append.

        :meth:`send` of ``joined``, inline (a call less per recipient of a cluster node's
        run of events). True if ``joined`` was queued as one entry: the flush counts it as
        one delivery, and the caller counts the other ``len(frames) - 1`` (for all its
        recipients at once)."""
        if not self._sends_runs:
            for frame in frames:  # a subclass (IRC) writes each frame its own way
                self.send(frame)
            return False
        if self.closing:
            return False
        out = self._out
        if out is None:
            self._out = joined
            registry = self.hub.registry
            dirty = registry.dirty
            if dirty:
                dirty.append(self)
            else:
                registry.mark_dirty(self)
        elif isinstance(out, list):
            out.append(joined)
        else:
            self._out = [out, joined]
        return True

    @classmethod
    def send_all(cls, sessions: Sequence[Peer], frame: bytes) -> None:
        """:meth:`send` to each of ``sessions`` (all of this class): a room's event, queued
        without a call per recipient where :meth:`send` is this class's own."""
        if cls._sends_runs:
            queue_all(cast("Sequence[Session]", sessions), frame)
        else:
            for session in sessions:  # a subclass (IRC) writes each frame its own way
                session.send(frame)

    @classmethod
    def send_run_all(cls, sessions: Sequence[Peer], frames: list[bytes], joined: bytes) -> int:
        """:meth:`send_frames` to each of ``sessions`` (all of this class), the same way; how
        many queued ``joined`` as one entry."""
        if cls._sends_runs:
            return queue_all(cast("Sequence[Session]", sessions), joined)
        for session in sessions:
            for frame in frames:
                session.send(frame)
        return 0

    def flush(self) -> None:
        """Write what is queued now (the registry's flush writes many: :func:`flush_all`)."""
        flush_all((self,))

    def wait_written(self) -> asyncio.Future[bool]:
        """True once what is queued now has reached the client: out of our buffers and
        acknowledged by its TCP stack (Linux: nothing unacknowledged in the socket's send
        queue); False if the connection ends first. Bytes in a kernel buffer of a client that
        never reads do not count: they would be lost when it goes away."""
        future: asyncio.Future[bool] = self.hub.loop.create_future()
        if self.closing:
            future.set_result(False)
            return future
        waiters = _written.setdefault(self, [])
        waiters.append(future)
        if len(waiters) == 1 and not self._out and not self._writing_paused:
            self._check_written()
        return future

    def _check_written(self) -> None:
        """Settle the written waiters once the socket's send queue is acknowledged; until
        then look again every :data:`WRITTEN_POLL` seconds (only while someone waits)."""
        if self not in _written or self.closing or self._out or self._writing_paused:
            return
        transport = self.transport
        if (
            transport is not None
            and transport.get_write_buffer_size() == 0
            and _unacknowledged(transport) <= 0
        ):
            self._settle_written(True)
            return
        self.hub.loop.call_later(WRITTEN_POLL, self._check_written)

    def _settle_written(self, written: bool) -> None:
        for future in _written.pop(self, ()):
            if not future.done():
                future.set_result(written)

    def fail(self, error: ProtocolError) -> None:
        """Send a fatal error as the last frame and close."""
        if self.closing:
            return
        log.info("closing %s (%s): %s %s", self.peer, self.nick, error.code, error.message)
        if error.code == ErrorCode.SLOW_CONSUMER:
            STATS.slow_consumers += 1
            # What it owes is in history; sending more would only grow the backlog.
            self._out = None
            self._settle_written(False)  # queued DMs it was owed stay queued
        self.close(self._error_frame(error))

    def close(self, last_frame: bytes | None = None) -> None:
        """Flush what is owed (plus ``last_frame``) and close; abort if the peer won't read."""
        if self.closing or self.transport is None:
            return
        self.flush()  # a client that does not keep up is cut here instead (fail: closed)
        if self.closing:
            return
        if last_frame is not None:
            self._out = last_frame
            flush_all((self,), slow_ok=True)  # its last word (an error it is owed) goes out
        self.closing = True
        transport = self.transport
        transport.close()
        self.hub.loop.call_later(CLOSE_GRACE, transport.abort)

    def pause_reading(self) -> None:
        """Stop reading requests (at shutdown: what was read is still answered)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @staticmethod
    def _error_frame(error: ProtocolError) -> bytes:
        return encode_message(ErrorReply.of(error))

    def send_error(self, error: ProtocolError) -> None:
        if error.fatal:
            self.fail(error)
        else:
            self.send(self._error_frame(error))

    @property
    def nick(self) -> str:
        return self.user.nick if self.user is not None else "-"


def queue_all(sessions: Sequence[Session], data: bytes) -> int:
    """Queue ``data`` (a frame, or a run's frames joined) for each session that is not
    closing, all of one server: :meth:`Session.send` in a loop, so a room's event costs no
    call per recipient; how many were queued. The turn's flush (:func:`flush_all`) writes
    it with whatever else the session is sent this turn, and checks there whether the
    client keeps up (one look at the transport per write, not per first frame)."""
    dirty: list[Peer] | None = None
    closing = 0
    for session in sessions:
        if session.closing:
            closing += 1
            continue
        out = session._out
        if out is None:
            session._out = data  # a turn's one frame (a broadcast's usual case): no list
            if dirty is None:
                registry = session.hub.registry
                dirty = registry.dirty
                if not dirty:
                    registry.mark_dirty(session)  # schedules the flush (and appends it)
                    continue
            dirty.append(session)  # the flush's list until it runs, after this loop
        elif isinstance(out, list):
            out.append(data)
        else:
            session._out = [out, data]
    return len(sessions) - closing


def flush_all(peers: Sequence[Peer], *, slow_ok: bool = False) -> None:
    """Write what each session queued this turn, in one write each: the registry's flush (a
    broadcast's second half), :meth:`Session.flush` inline, so a recipient costs no call,
    and the counters (deliveries, the output estimate) are added up once per flush.

    A session whose transport still holds more than ``max_buffer`` bytes from earlier writes
    is cut with ``slow_consumer`` instead of written to (its frames stay in history): only
    what those writes left counts, so this is the same as checking at its turn's first frame,
    never stricter. ``slow_ok``: write anyway (a closing session's last frame).

    Each of ``peers`` is a :class:`Session` (only they mark themselves dirty): the server
    installs this as its registry's ``flush_dirty``."""
    if not peers:
        return
    sessions = cast("Sequence[Session]", peers)
    hub = sessions[0].hub
    registry = hub.registry
    max_buffer = sys.maxsize if slow_ok else hub.config.max_buffer
    waited_on = bool(_written)  # only a flush's own cuts empty it meanwhile, never fill it
    # Bytes this flush may write before the output bound must be enforced (counted exactly):
    # an int, so the comparison per write stays the interpreter's fast one.
    room = _room(registry)
    written = 0
    # Frames written: one per session, give or take (counted where it is not one).
    deliveries = len(sessions)
    try:
        for session in sessions:
            out = session._out
            if out is None:
                deliveries -= 1
            else:
                session._out = None
                transport = session.transport
                if transport is None or transport.is_closing():
                    deliveries -= 1
                elif transport.get_write_buffer_size() > max_buffer:
                    deliveries -= 1
                    registry.output_estimate += written * MEMORY_PER_BYTE_OWED
                    written = 0
                    session.fail(
                        ProtocolError(ErrorCode.SLOW_CONSUMER, "client is not reading fast enough")
                    )
                    room = _room(registry)
                else:
                    if type(out) is not bytes and isinstance(out, list):  # the turn's frames
                        deliveries += len(out) - 1
                        out = b"".join(out)
                    transport.write(out)
                    written += len(out)
                    if written > room:
                        registry.output_estimate += written * MEMORY_PER_BYTE_OWED
                        written = 0
                        if registry.output_estimate > registry.output_trigger:
                            registry.enforce_output_bound()  # may cut this one too
                        room = _room(registry)
            if (
                waited_on
                and session in _written
                and not session._writing_paused
                and not session.closing
            ):
                session._check_written()
    finally:
        registry.output_estimate += written * MEMORY_PER_BYTE_OWED
    STATS.deliveries += deliveries


def _room(registry: Registry) -> int:
    """Bytes that may be written before the output estimate passes its trigger (capped at
    a small int's range: past it the caller just counts again)."""
    room = registry.output_trigger - registry.output_estimate  # infinite without a bound
    if room >= _ROOM_CAP * MEMORY_PER_BYTE_OWED:
        return _ROOM_CAP
    return int(room) // MEMORY_PER_BYTE_OWED


#: Below 2**30: a one-digit int, compared without a slow path.
_ROOM_CAP = (1 << 30) - 1


class AdmittedSession(Session):
    """A session the listener admitted: counted against its address's limit on accept."""

    __slots__ = ()
    admitted = True
