"""A reconnecting chat session: the client-side policy on top of :class:`Connection`.

:class:`Connection` is one TCP session with no policy. :class:`ChatSession` keeps a user's
view of the chat alive across many of them: it pings every 30 s, reconnects with jittered
exponential backoff, rejoins every room and resumes every room, DM and the announcement
stream with ``history after <last seq>``, so a user sees each message exactly once. What
cannot be recovered (more was missed than one history reply or the server's history holds)
becomes an explicit :class:`Gap` in the conversation rather than a silent hole.

Messages typed while disconnected wait in an outbox and are sent, in order, with a ``cid``,
so a resend after a lost ``ok`` (or an ``internal`` error, whose outcome is unknown) is never
stored twice.

A guest nick's ``resume`` (protocol revision 2) is kept on disk (:mod:`imchat.client.resume`)
and sent on every ``hello``, so reconnects and restarts keep the identity and its nick. A
``welcome`` with an ``epoch`` other than the one seen before, or a ``join`` whose ``last_seq``
is below what was seen, means the server's history was reset: what is held above it is void,
it is fetched again, and listeners get one :class:`HistoryReset`; nothing already shown is
taken back, and no new message is hidden as a "duplicate" of a void seq.

It is independent of any UI: listeners receive the small frozen dataclasses below, in order,
synchronously, on the event loop that runs :meth:`ChatSession.run`. Nothing here imports
Textual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from imchat.protocol import (
    MAX_HISTORY_LIMIT,
    Announce,
    Dm,
    History,
    Join,
    Part,
    Ping,
    Request,
    Say,
    Users,
    nick_key,
    normalize_room,
)
from imchat.protocol.events import (
    AnnounceEvent,
    DmEvent,
    ErrorReply,
    JoinedEvent,
    MarkerEvent,
    MsgEvent,
    OfflineEvent,
    OnlineEvent,
    PartedEvent,
    TopicEvent,
    TypingEvent,
    event_from_dict,
)

from .connection import DEFAULT_PORT, Connection, ConnectionClosed, Message, ServerError
from .resume import ResumeStore, remember_welcome
from .retry import RETRY_DELAYS, request_retrying
from .servers import Endpoint, connect_first

log = logging.getLogger(__name__)

PING_INTERVAL = 30.0
PING_TIMEOUT = 20.0
#: How long catching up after a (re)connect may take before the connection is given up.
RESYNC_TIMEOUT = 60.0
INITIAL_HISTORY = 50
OLDER_HISTORY = 100

#: Error codes on ``hello`` after which retrying cannot help. ``bad_frame``: the server
#: cannot read our framing, as a TLS port answers a plain connection: only ``--tls`` helps.
_PERMANENT_HELLO_ERRORS = frozenset({"auth_failed", "bad_nick", "bad_request", "bad_frame"})


class ConvKind(StrEnum):
    ROOM = "room"
    DM = "dm"
    ANNOUNCE = "announce"


@dataclass(frozen=True, slots=True)
class ConvKey:
    """Identifies a conversation: a room name, a DM partner's nick key, or announcements."""

    kind: ConvKind
    name: str = ""

    @classmethod
    def room(cls, room: str) -> ConvKey:
        return cls(ConvKind.ROOM, room)

    @classmethod
    def dm(cls, nick: str) -> ConvKey:
        return cls(ConvKind.DM, nick_key(nick))


ANNOUNCEMENTS = ConvKey(ConvKind.ANNOUNCE)


def dm_partner(message: Message, own_nick: str) -> str:
    """The other user of a ``dm`` event, as spelled in it (our own DMs to ourselves: us)."""
    sender, to = str(message.get("from", "")), str(message.get("to", ""))
    return to if nick_key(sender) == nick_key(own_nick) else sender


def stream_fields(key: ConvKey) -> dict[str, Any]:
    """How a request struct (``History``, ``Mark``, ``Edit``, …) names the conversation."""
    if key.kind is ConvKind.ROOM:
        return {"room": key.name}
    if key.kind is ConvKind.DM:
        return {"with_": key.name}
    return {"announcements": True}


class State(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"


# -- events delivered to listeners --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``after < seq < before`` exist but could not be fetched."""

    conv: ConvKey
    after: int
    before: int

    @property
    def missing(self) -> int:
        return self.before - self.after - 1


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: State
    #: For RECONNECTING: the monotonic time of the next attempt.
    retry_at: float | None = None
    #: Why we are not connected (the last error), if known.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Welcomed:
    welcome: Message


@dataclass(frozen=True, slots=True)
class MessagesAdded:
    """Messages (and gap markers) for one conversation, oldest first.

    ``prepend`` is True for older history fetched by :meth:`ChatSession.load_older`; such
    items come before everything delivered so far. Otherwise they follow it.
    """

    conv: ConvKey
    items: tuple[Message | Gap, ...]
    prepend: bool = False
    #: True when the beginning of the conversation has been reached (prepend only).
    complete: bool = False
    #: True for a conversation's first load (recent history, not news to the user).
    initial: bool = False


@dataclass(frozen=True, slots=True)
class RoomJoined:
    room: str
    topic: str
    members: tuple[str, ...]
    rejoin: bool = False


@dataclass(frozen=True, slots=True)
class RoomLeft:
    room: str
    #: Another session of this user left it (membership is the user's), not this one.
    elsewhere: bool = False


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """A pushed event that is not a stored message: joined, parted, topic, online, offline."""

    message: Message


@dataclass(frozen=True, slots=True)
class OutboxChanged:
    conv: ConvKey
    pending: tuple[Pending, ...]


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A queued message the server refused; it has been dropped from the outbox."""

    conv: ConvKey
    text: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class HistoryReset:
    """The server's history was reset: a new store ``epoch`` (``conv`` None: every
    conversation) or a room rewound to ``last_seq``. The seqs seen are void; recent history
    is fetched again; what is already on screen stays (never hide a message)."""

    conv: ConvKey | None
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class HistoryFailed:
    """The server refused a conversation's catch-up ``history`` (e.g. ``rate_limited``):
    nothing was added, and the conversation is caught up again at the next connect (or when
    :meth:`ChatSession.load_dm_history` asks)."""

    conv: ConvKey
    code: str
    message: str


SessionEvent = (
    StateChanged
    | HistoryReset
    | HistoryFailed
    | Welcomed
    | MessagesAdded
    | RoomJoined
    | RoomLeft
    | ServerEvent
    | OutboxChanged
    | SendFailed
)
Listener = Callable[[SessionEvent], None]


# -- conversation bookkeeping (pure; no I/O) ----------------------------------------------


@dataclass(slots=True)
class Pending:
    """A message in the outbox. ``cid`` makes its resend idempotent."""

    conv: ConvKey
    text: str
    target: str
    action: bool = False
    cid: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Revision 3: the seq (same conversation) this message answers.
    reply_to: int | None = None


class Conversation:
    """Sequence bookkeeping for one conversation: dedup, ordering and gap detection.

    ``last_seq`` is the newest seq delivered to the listener; anything at or below it is a
    duplicate. While ``syncing`` (between a reconnect and the end of its history catch-up)
    live messages are held back so that history and live events come out in seq order.
    """

    __slots__ = ("buffer", "complete", "first_seq", "key", "last_seq", "syncing", "title")

    def __init__(self, key: ConvKey, title: str) -> None:
        self.key = key
        self.title = title
        self.last_seq: int | None = None
        self.first_seq: int | None = None
        self.syncing = False
        self.complete = False
        self.buffer: list[Message] = []

    def live(self, message: Message) -> list[Message | Gap]:
        if self.syncing:
            self.buffer.append(message)
            return []
        return self.deliver([message])

    def deliver(self, messages: Iterable[Message]) -> list[Message | Gap]:
        """Messages newer than ``last_seq``, in seq order, with a Gap wherever seqs skip."""
        out: list[Message | Gap] = []
        for message in sorted(messages, key=_seq):
            seq = _seq(message)
            if self.last_seq is not None:
                if seq <= self.last_seq:
                    continue
                if seq > self.last_seq + 1:
                    out.append(Gap(self.key, self.last_seq, seq))
            if self.first_seq is None:
                # The oldest message shown, also when only the stream's last seq was known
                # before it (the announcements at connect): older pages end above it.
                self.first_seq = seq
            self.last_seq = seq
            out.append(message)
        return out

    def begin_sync(self) -> None:
        self.syncing = True

    def rewind(self, last_seq: int | None) -> None:
        """Forget everything above ``last_seq`` (None: everything), so it is fetched again."""
        self.last_seq = last_seq
        if last_seq is None or (self.first_seq is not None and self.first_seq > last_seq):
            self.first_seq = None
        self.complete = False
        self.buffer = [m for m in self.buffer if last_seq is not None and _seq(m) > last_seq]

    def finish_sync(self, history: list[Message], known_last: int | None) -> list[Message | Gap]:
        """Deliver the catch-up ``history`` then whatever arrived live meanwhile.

        ``known_last`` is the server's newest seq at the time of the catch-up (a join's
        ``last_seq``), when known: if history could not reach it, that is a gap too.
        """
        self.syncing = False
        out = self.deliver(history)
        if known_last is not None:
            if self.last_seq is None:
                if not out and known_last:
                    self.last_seq = known_last
            elif known_last > self.last_seq:
                out.append(Gap(self.key, self.last_seq, known_last + 1))
                self.last_seq = known_last
        buffered, self.buffer = self.buffer, []
        out.extend(self.deliver(buffered))
        return out

    def older(self, messages: list[Message], limit: int) -> list[Message]:
        """Record a page of older history; return the part not already shown."""
        short = len(messages) < limit
        if self.first_seq is not None:
            messages = [m for m in messages if _seq(m) < self.first_seq]
        if messages:
            self.first_seq = _seq(messages[0])
            if self.last_seq is None:
                self.last_seq = _seq(messages[-1])
        if short or self.first_seq == 1:
            self.complete = True
        return messages


def _seq(message: Message) -> int:
    seq = message.get("seq")
    return seq if isinstance(seq, int) else 0


@dataclass(slots=True)
class RoomInfo:
    name: str
    topic: str = ""
    #: nick key -> nick as spelled by its owner
    members: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, so clients do not all return at the same instant."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        delay = min(self.cap, self.base * self.factor**attempt)
        return delay * (0.5 + rng() / 2)


class ConnectionLike(Protocol):
    welcome: Message | None

    @property
    def closed(self) -> bool: ...
    async def hello(
        self,
        nick: str,
        *,
        password: str | None = ...,
        token: str | None = ...,
        client: str | None = ...,
        resume: str | None = ...,
    ) -> Message: ...
    async def request(self, message: Any, /, **fields: Any) -> Message: ...
    async def next_event(self, timeout: float | None = None) -> Message: ...
    async def wait_closed(self) -> None: ...
    async def close(self) -> None: ...
    def abort(self) -> None: ...


Connector = Callable[[], Awaitable[ConnectionLike]]


class NotConnected(Exception):
    """A request that needs the server was made while there is no connection."""


class ChatSession:
    """A user's chat, kept alive across reconnects. Run :meth:`run` as a task."""

    def __init__(
        self,
        nick: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        password: str | None = None,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        connector: Connector | None = None,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
        client_name: str = "imchat-tui",
        rooms: Iterable[str] = (),
        resumes: ResumeStore | None = None,
        servers: Sequence[Endpoint] = (),
    ) -> None:
        self.nick = nick
        #: Every address of the service (``servers``, or ``host``:``port``); the first names
        #: it. A lost connection is followed by trying the next one first.
        self.servers = tuple(servers) or (Endpoint(host, port),)
        self.host, self.port = self.servers[0].host, self.servers[0].port
        self._next_server = 0
        self._ssl = ssl
        self._password = password
        self._token = token
        self._connector: Connector = connector or self._connect_next
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff = backoff or Backoff()
        #: Waits before an outbox message answered ``rate_limited`` or ``internal`` is sent
        #: again (same cid); past them, it is reported with :class:`SendFailed`.
        self.retry_delays = RETRY_DELAYS
        self._rng = rng
        self._client_name = client_name
        self.state = State.OFFLINE
        self.retry_at: float | None = None
        self.welcome: Message | None = None
        self.admin = False
        #: Guest identities' resume secrets (None: kept nowhere, e.g. with a fake server).
        self.resumes = resumes if resumes is not None else ResumeStore()
        #: This session's guest identity secret, also kept in memory.
        self._resume: str | None = None
        #: The server store's epoch seen last; another one voids every seq we hold.
        self.epoch: str | None = None
        #: Rooms we are in; those given at construction are joined on connect.
        self.rooms: dict[str, RoomInfo] = {
            name: RoomInfo(name) for name in map(normalize_room, rooms)
        }
        self.conversations: dict[ConvKey, Conversation] = {}
        self.online: dict[str, str] = {}
        self.outbox: list[Pending] = []
        self._listeners: list[Listener] = []
        self._conn: ConnectionLike | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._connected_once = False
        #: run() has returned: nothing queued now would ever be sent.
        self._stopped = False
        self._joining: set[str] = set()
        self._side_tasks: set[asyncio.Future[Any]] = set()

    async def _connect_next(self) -> Connection:
        conn, index = await connect_first(self.servers, ssl=self._ssl, start=self._next_server)
        # When this connection is lost, another node is tried first: the one that dropped
        # it may be the one that is going away.
        self._next_server = (index + 1) % len(self.servers)
        return conn

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the session
                log.exception("session listener failed on %r", event)

    def _set_state(
        self, state: State, *, retry_at: float | None = None, reason: str | None = None
    ) -> None:
        self.state = state
        self.retry_at = retry_at
        self._emit(StateChanged(state, retry_at, reason))

    # -- the connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect whenever the connection is lost, until :meth:`close`."""
        attempt = 0
        reason: str | None = None
        self._stopped = False  # run again after a permanent failure (e.g. with a new nick)
        while not self._closing:
            self._set_state(
                State.CONNECTING if not self._connected_once else State.RECONNECTING,
                reason=reason,
            )
            try:
                conn = await self._connector()
            except (OSError, TimeoutError) as exc:
                reason = (
                    f"cannot connect: {exc.strerror or exc}"
                    if isinstance(exc, OSError)
                    else "connect timed out"
                )
            else:
                try:
                    reason, served = await self._serve(conn)
                    if served:
                        attempt = 0
                except _Permanent as exc:
                    self._stopped = True
                    self._set_state(State.OFFLINE, reason=str(exc))
                    return
                except Exception as exc:  # a bug or a malformed frame: retry, don't die
                    log.exception("session failed")
                    reason = f"client error: {exc!r}"
                finally:
                    self._conn = None
                    conn.abort()
            if self._closing:
                break
            delay = self.backoff.delay(attempt, self._rng)
            attempt += 1
            retry_at = time.monotonic() + delay
            self._set_state(State.RECONNECTING, retry_at=retry_at, reason=reason)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self._stopped = True
        self._set_state(State.OFFLINE, reason="closed")

    def reconnect_now(self) -> None:
        """Skip the rest of the backoff wait (the user asked to retry)."""
        self._wake.set()

    async def close(self) -> None:
        """Say goodbye and stop reconnecting."""
        self._closing = True
        self._wake.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 3)

    async def _serve(self, conn: ConnectionLike) -> tuple[str, bool]:
        """One connection's life: hello, resync, then pump events until it ends.

        Returns why it ended and whether it got as far as a welcome.
        """
        resume = None
        if self._password is None and self._token is None:
            # The file first (another client of ours may have renewed it), else our memory
            # (an unwritable state dir must not cost the nick at the next reconnect).
            resume = self.resumes.get(self.host, self.port, self.nick) or self._resume
        try:
            fields: dict[str, Any] = {"resume": resume} if resume is not None else {}
            welcome = await conn.hello(
                self.nick,
                password=self._password,
                token=self._token,
                client=self._client_name,
                **fields,
            )
        except ServerError as exc:
            if exc.code == "nick_taken" and resume is not None:
                # The identity our secret named is gone: someone else holds the nick now.
                self.resumes.forget(self.host, self.port, self.nick)
                self._resume = None
            if exc.code in _PERMANENT_HELLO_ERRORS or exc.code == "nick_taken":
                raise _Permanent(f"{exc.code}: {exc.message}") from None
            return f"{exc.code}: {exc.message}", False
        except ConnectionClosed as exc:
            if exc.error is not None and exc.error.get("code") in _PERMANENT_HELLO_ERRORS:
                raise _Permanent(str(exc)) from None  # closed with one: the same verdict
            return str(exc), False
        self.welcome = welcome
        self.nick = str(welcome.get("nick", self.nick))
        self.admin = bool(welcome.get("admin"))
        remember_welcome(self.resumes, self.host, self.port, self.nick, welcome)
        kept = welcome.get("resume")
        self._resume = kept if isinstance(kept, str) else None
        self._check_epoch(welcome)
        for conv in self.conversations.values():
            conv.begin_sync()
        self._conn = conn
        pump = asyncio.create_task(self._pump(conn))
        tasks: list[asyncio.Future[Any]] = [pump]
        try:
            self._emit(Welcomed(welcome))
            try:
                await asyncio.wait_for(
                    self._resync(conn, rejoin=self._connected_once), RESYNC_TIMEOUT
                )
            except TimeoutError:
                conn.abort()  # a server that stopped answering: start over
                return "the server stopped answering", False
            self._connected_once = True
            self._set_state(State.CONNECTED)
            tasks.append(asyncio.create_task(self._ping_loop(conn)))
            tasks.append(asyncio.create_task(self._send_loop(conn)))
            await conn.wait_closed()
        except (ConnectionClosed, ConnectionError):
            pass
        finally:
            tasks.extend(self._side_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Whatever was mid-sync stays unsynced; the next connection syncs it again.
            for conv in self.conversations.values():
                conv.syncing = False
                conv.buffer.clear()
        error = getattr(conn, "closed_error", None)
        if error:
            if error.get("code") == "nick_taken":
                # An account took our guest nick: the identity is gone for good.
                self.resumes.forget(self.host, self.port, self.nick)
                self._resume = None
                raise _Permanent(f"nick_taken: {error.get('message', '')}")
            return f"{error.get('code')}: {error.get('message', '')}", True
        return "connection lost", True

    def _check_epoch(self, welcome: Message) -> None:
        """A store with another epoch: every seq we remember is void (rev 2)."""
        epoch = welcome.get("epoch")
        if not isinstance(epoch, str):
            return
        previous, self.epoch = self.epoch, epoch
        if previous is None or previous == epoch:
            return
        for conv in self.conversations.values():
            conv.rewind(None)
        self._emit(HistoryReset(None))

    async def _pump(self, conn: ConnectionLike) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                self._on_event(await conn.next_event())

    async def _ping_loop(self, conn: ConnectionLike) -> None:
        """Keep the session from idling out and notice a dead peer that never says so."""
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await asyncio.wait_for(conn.request(Ping()), self.ping_timeout)
            except TimeoutError:
                log.info("no pong within %ss; dropping the connection", self.ping_timeout)
                conn.abort()
                return
            except (ConnectionClosed, ServerError):
                return

    async def _resync(self, conn: ConnectionLike, *, rejoin: bool) -> None:
        """Rejoin rooms and fetch what each conversation missed while we were away."""
        try:
            users = await conn.request(Users())
            self.online = {nick_key(n): n for n in users.get("users", [])}
        except ServerError:
            pass
        for room in list(self.rooms):
            try:
                await self._join(conn, room, rejoin=rejoin, patient=True)
            except ServerError as exc:
                self._finish(self._conv(ConvKey.room(room)), [], None)
                self._emit(SendFailed(ConvKey.room(room), f"/join {room}", exc.code, exc.message))
        for key, conv in list(self.conversations.items()):
            if key.kind is ConvKind.DM:
                await self._catch_up(conn, conv, stream_fields(key))
            elif key.kind is ConvKind.ANNOUNCE:
                await self._catch_up(conn, conv, stream_fields(ANNOUNCEMENTS))
        if ANNOUNCEMENTS not in self.conversations:
            # Learn where the announcement stream stands so later gaps can be noticed.
            with contextlib.suppress(ServerError):
                reply = await conn.request(History(announcements=True, limit=1))
                messages = reply.get("messages", [])
                conv = self._conv(ANNOUNCEMENTS)
                conv.last_seq = _seq(messages[-1]) if messages else 0

    async def _catch_up(
        self,
        conn: ConnectionLike,
        conv: Conversation,
        anchor: dict[str, Any],
        known_last: int | None = None,
    ) -> None:
        last = conv.last_seq
        history: list[Message] = []
        try:
            if last is None:
                if known_last != 0:
                    reply = await conn.request(History(limit=INITIAL_HISTORY, **anchor))
                    history = reply.get("messages", [])
            elif known_last is not None and known_last - last > MAX_HISTORY_LIMIT:
                # More was missed than one reply holds: take the newest; the rest is a gap.
                reply = await conn.request(
                    History(before=known_last + 1, limit=MAX_HISTORY_LIMIT, **anchor)
                )
                history = reply.get("messages", [])
            elif known_last is None or known_last > last:
                reply = await conn.request(History(after=last, limit=MAX_HISTORY_LIMIT, **anchor))
                history = reply.get("messages", [])
                if len(history) >= MAX_HISTORY_LIMIT:
                    latest = await conn.request(History(limit=MAX_HISTORY_LIMIT, **anchor))
                    history = latest.get("messages", [])
        except ServerError as exc:
            log.info("history for %s failed: %s", conv.key, exc)
            self._finish(conv, history, known_last)
            self._emit(HistoryFailed(conv.key, exc.code, exc.message))
            return
        self._finish(conv, history, known_last)

    def _finish(self, conv: Conversation, history: list[Message], known_last: int | None) -> None:
        initial = conv.last_seq is None
        items = conv.finish_sync(history, known_last)
        if conv.first_seq is None and known_last == 0:
            conv.complete = True
        if history and conv.first_seq == 1:
            conv.complete = True
        if items:
            self._emit(MessagesAdded(conv.key, tuple(items), initial=initial))

    async def _join(
        self, conn: ConnectionLike, room: str, *, rejoin: bool, patient: bool = False
    ) -> RoomJoined:
        """Join ``room`` and catch up on it. ``patient`` (the joins at each connect): a
        ``rate_limited`` join is sent again after a pause (``retry_delays``), so a user in
        more rooms than the server's burst of joins gets all of them back, paced."""
        key = ConvKey.room(room)
        conv = self._conv(key, f"#{room}")
        conv.begin_sync()
        self._joining.add(room)
        try:
            if patient:
                reply = await request_retrying(conn, Join(room=room), self.retry_delays)
            else:
                reply = await conn.request(Join(room=room))
        except BaseException:
            conv.syncing = False
            raise
        finally:
            self._joining.discard(room)
        name = str(reply.get("room", room))
        info = self.rooms.setdefault(name, RoomInfo(name))
        info.topic = str(reply.get("topic", ""))
        members = [str(m) for m in reply.get("members", [])]
        info.members = {nick_key(m): m for m in members}
        # Every member has a session (the last one's end parts it), so all are online, even
        # those who came before we shared a room and whose "online" scoped presence kept
        # from us (rev 2).
        self.online.update(info.members)
        joined = RoomJoined(name, info.topic, tuple(members), rejoin=rejoin)
        self._emit(joined)
        known_last = reply.get("last_seq")
        if isinstance(known_last, int) and conv.last_seq is not None and known_last < conv.last_seq:
            # The room's stream was rewound (a store restored from an older copy): seqs we
            # saw were or will be reused, and which of ours are void is unknown: fetch the
            # room's recent history afresh after the reset line (shown twice beats hidden).
            conv.rewind(None)
            self._emit(HistoryReset(key, known_last))
        await self._catch_up(
            conn,
            conv,
            stream_fields(ConvKey.room(name)),
            known_last if isinstance(known_last, int) else None,
        )
        return joined

    async def _adopt(self, room: str) -> None:
        """Take up a room another of our sessions joined (the join is idempotent)."""
        conn = self._conn
        if conn is None or room in self.rooms:
            return
        with contextlib.suppress(ServerError, ConnectionClosed):
            await self._join(conn, room, rejoin=False)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- incoming events --------------------------------------------------------------------

    def _conv(self, key: ConvKey, title: str | None = None) -> Conversation:
        conv = self.conversations.get(key)
        if conv is None:
            if title is None:
                title = {
                    ConvKind.ROOM: f"#{key.name}",
                    ConvKind.DM: key.name,
                    ConvKind.ANNOUNCE: "announcements",
                }[key.kind]
            conv = self.conversations[key] = Conversation(key, title)
        return conv

    def dm_partner(self, message: Message) -> str:
        return dm_partner(message, self.nick)

    def _on_event(self, message: Message) -> None:
        """Dispatch a server event by its type (:mod:`imchat.protocol.events`).

        Conversations keep the event as it came (a dict, what ``history`` returns too); the
        typed view decides what it is. A frame of a type this client does not know, or not
        well formed, is ignored, as the contract asks of receivers.
        """
        try:
            event = event_from_dict(message)
        except msgspec.ValidationError:
            log.info("ignoring an event this client does not know: %.200r", message)
            return
        match event:
            case MsgEvent(room=room):
                self._deliver_live(ConvKey.room(room), message, f"#{room}")
            case DmEvent():
                partner = self.dm_partner(message)
                self._deliver_live(ConvKey.dm(partner), message, partner)
            case AnnounceEvent():
                self._deliver_live(ANNOUNCEMENTS, message, "announcements")
            case JoinedEvent() | PartedEvent():
                self._on_membership(event, message)
            case TopicEvent(room=room, topic=topic):
                info = self.rooms.get(room)
                if info is not None:
                    info.topic = topic
                self._emit(ServerEvent(message))
            case OnlineEvent(nick=nick):
                self.online[nick_key(nick)] = nick
                self._emit(ServerEvent(message))
            case OfflineEvent(nick=nick):
                self.online.pop(nick_key(nick), None)
                self._emit(ServerEvent(message))
            case ErrorReply() | MarkerEvent() | TypingEvent():  # marker, typing: client.features
                self._emit(ServerEvent(message))

    def _deliver_live(self, key: ConvKey, message: Message, title: str) -> None:
        conv = self._conv(key, title)
        items = conv.live(message)
        if items:
            self._emit(MessagesAdded(key, tuple(items)))

    def _on_membership(self, event: JoinedEvent | PartedEvent, message: Message) -> None:
        room, nick = event.room, event.nick
        joined = isinstance(event, JoinedEvent)
        info = self.rooms.get(room)
        mine = nick_key(nick) == nick_key(self.nick)
        if info is None:
            if joined and mine and room not in self._joining:
                # Another of our sessions joined: membership is the user's, so are we.
                self._spawn(self._adopt(room))
            return
        if joined:
            info.members[nick_key(nick)] = nick
            # Presence is scoped: someone who came online before sharing a room with us
            # sent us no "online", but only a user with a session joins a room.
            self.online[nick_key(nick)] = nick
        else:
            info.members.pop(nick_key(nick), None)
        self._emit(ServerEvent(message))
        if not joined and mine:
            # Another of our sessions left the room: so have we.
            self.rooms.pop(room, None)
            self._emit(RoomLeft(room, elsewhere=True))

    # -- requests ---------------------------------------------------------------------------

    def _require(self) -> ConnectionLike:
        conn = self._conn
        if conn is None or conn.closed or self.state is not State.CONNECTED:
            raise NotConnected(f"not connected ({self.state})")
        return conn

    async def request(self, request: Request) -> Message:
        """A plain request on the current connection (``Rooms``, ``Users``, ``Topic``...)."""
        return await self._require().request(request)

    async def join(self, room: str) -> RoomJoined:
        """Join (or re-show) a room; its recent history arrives as :class:`MessagesAdded`."""
        name = normalize_room(room)  # raises ProtocolError(bad_room) early
        conn = self._require()
        conv = self.conversations.get(ConvKey.room(name))
        if name in self.rooms and conv is not None:
            info = self.rooms[name]
            return RoomJoined(name, info.topic, tuple(info.members.values()))
        return await self._join(conn, name, rejoin=False)

    async def part(self, room: str) -> None:
        name = normalize_room(room)
        await self._require().request(Part(room=name))
        if self.rooms.pop(name, None) is not None:
            self._emit(RoomLeft(name))

    def open_dm(self, nick: str) -> ConvKey:
        """Make a DM conversation exist locally (before any message in it)."""
        key = ConvKey.dm(nick)
        self._conv(key, nick)
        return key

    async def load_dm_history(self, nick: str) -> None:
        """Fetch the recent history of a newly opened DM conversation."""
        key = self.open_dm(nick)
        conv = self.conversations[key]
        if conv.last_seq is not None or conv.syncing:
            return
        conn = self._require()
        conv.begin_sync()
        await self._catch_up(conn, conv, stream_fields(ConvKey.dm(nick)))

    async def load_older(self, key: ConvKey, limit: int = OLDER_HISTORY) -> int:
        """Fetch history before the oldest message shown; returns how many were added."""
        conv = self.conversations.get(key)
        if conv is None or conv.complete or conv.syncing:
            return 0
        before = conv.first_seq
        reply = await self._require().request(
            History(limit=limit, before=before, **stream_fields(key))
        )
        older = conv.older(list(reply.get("messages", [])), limit)
        if older or conv.complete:
            self._emit(MessagesAdded(key, tuple(older), prepend=True, complete=conv.complete))
        return len(older)

    def say(
        self, room: str, text: str, *, action: bool = False, reply_to: int | None = None
    ) -> Pending:
        key = ConvKey.room(normalize_room(room))
        return self._queue(Pending(key, text, key.name, action=action, reply_to=reply_to))

    def dm(self, nick: str, text: str, *, reply_to: int | None = None) -> Pending:
        key = self.open_dm(nick)
        return self._queue(Pending(key, text, nick, reply_to=reply_to))

    def announce(self, text: str) -> Pending:
        return self._queue(Pending(ANNOUNCEMENTS, text, ""))

    def _queue(self, pending: Pending) -> Pending:
        if self._stopped:
            raise NotConnected(f"offline for good ({self.state}); not sent")
        self.outbox.append(pending)
        self._outbox_changed(pending.conv)
        self._outbox_wake.set()
        return pending

    def _outbox_changed(self, key: ConvKey) -> None:
        self._emit(OutboxChanged(key, tuple(p for p in self.outbox if p.conv == key)))

    async def _send_loop(self, conn: ConnectionLike) -> None:
        """Send the outbox in order, one at a time, each with its cid."""
        while True:
            while self.outbox:
                pending = self.outbox[0]
                try:
                    await request_retrying(conn, self._payload(pending), self.retry_delays)
                except ServerError as exc:
                    self._drop(pending)
                    self._emit(SendFailed(pending.conv, pending.text, exc.code, exc.message))
                    continue
                except (ConnectionClosed, ConnectionError):
                    return  # it stays queued; the next connection resends it
                # Confirmed: the message itself arrives as an event (or came in history).
                self._drop(pending)
            self._outbox_wake.clear()
            await self._outbox_wake.wait()

    def _drop(self, pending: Pending) -> None:
        with contextlib.suppress(ValueError):
            self.outbox.remove(pending)
        self._outbox_changed(pending.conv)

    @staticmethod
    def _payload(pending: Pending) -> Say | Dm | Announce:
        kind = pending.conv.kind
        if kind is ConvKind.ROOM:
            return Say(
                room=pending.target,
                text=pending.text,
                kind="action" if pending.action else None,
                cid=pending.cid,
                reply_to=pending.reply_to,
            )
        if kind is ConvKind.DM:
            return Dm(
                to=pending.target, text=pending.text, cid=pending.cid, reply_to=pending.reply_to
            )
        return Announce(text=pending.text, cid=pending.cid)


class _Permanent(Exception):
    """A hello failure that retrying cannot fix (bad password, bad nick)."""
