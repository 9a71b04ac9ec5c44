"""The chat logic: one handler per request type, over a Store and a Fanout.

Handlers validate nothing themselves (``parse_request`` did) and check only state: membership,
presence, permissions. Each handler sends its reply before publishing the events it causes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

import imchat
from imchat.protocol import (
    PROTOCOL_VERSION,
    Announce,
    Bye,
    Dm,
    ErrorCode,
    Hello,
    History,
    Join,
    Limits,
    Part,
    Ping,
    ProtocolError,
    Request,
    Rooms,
    Say,
    Topic,
    Users,
    encode_frame,
    encode_message,
    parse_request,
)

from .auth import hash_token, verify_password
from .config import ServerConfig
from .fanout import Fanout, User
from .ratelimit import FailureLimiter, TokenBucket
from .session import Session
from .store import ANNOUNCE_STREAM, Account, Draft, Store, Stored, dm_stream, room_stream

log = logging.getLogger(__name__)

SERVER_NAME = f"imchat/{'.'.join(imchat.__version__.split('.')[:2])}"
RATE_LIMITED_TYPES = (Say, Dm, Announce, Topic)
#: A flush that took longer than this (seconds) makes the next one wait as long, up to
#: FLUSH_REST_MAX: enough to batch a burst, short enough not to show in latency.
FLUSH_REST_AFTER = 0.002
FLUSH_REST_MAX = 0.005
#: Password checks running at once: each scrypt takes ~16 MiB and tens of milliseconds.
MAX_PARALLEL_PASSWORD_CHECKS = 4
#: Bytes a session reads from its socket at most at a time (see ``Session.get_buffer``).
READ_SIZE = 65536

Handler = Callable[[Session, Any], Awaitable[None]]
#: How a session logged in: ("token", token hash) or ("password", password hash).
Credential = tuple[str, str]


def now() -> float:
    return round(time.time(), 3)


@dataclass(slots=True)
class _Append:
    """A say, dm or announce whose commit is under way, finished in request order."""

    request: Request
    stored: asyncio.Future[Stored]
    #: Sends the reply, then the events; runs once the message is committed.
    finish: Callable[[Stored], None]


def _internal(request: Request | None) -> ProtocolError:
    error = ProtocolError(ErrorCode.INTERNAL, "internal server error")
    return error.with_id(request.id if request is not None else None)


class Hub:
    def __init__(self, config: ServerConfig, store: Store, fanout: Fanout) -> None:
        self.config = config
        self.store = store
        self.fanout = fanout
        self.limits = Limits(max_text=config.max_text)
        self.loop = asyncio.get_running_loop()
        self.sessions: set[Session] = set()
        #: Open connections per client address, for ``max_connections_per_ip``.
        self.connections_per_addr: dict[str, int] = {}
        self.auth_limiter = FailureLimiter(config.auth_failures, config.auth_window)
        self._password_checks = asyncio.Semaphore(MAX_PARALLEL_PASSWORD_CHECKS)
        #: Shared by all sessions: each read is consumed before the next one starts.
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._dirty: list[Session] = []
        self._rest_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._handlers: dict[type[Request], Handler] = {
            Hello: self.on_hello,
            Ping: self.on_ping,
            Bye: self.on_bye,
            Join: self.on_join,
            Part: self.on_part,
            Topic: self.on_topic,
            Rooms: self.on_rooms,
            Users: self.on_users,
            History: self.on_history,
        }
        self._appenders: dict[type[Request], Callable[[Session, Any], _Append]] = {
            Say: self.start_say,
            Dm: self.start_dm,
            Announce: self.start_announce,
        }

    # -- plumbing --------------------------------------------------------------------------

    def new_bucket(self) -> TokenBucket:
        return TokenBucket(self.config.rate, self.config.burst)

    def mark_dirty(self, session: Session) -> None:
        if not self._dirty:
            rest = self._rest_until - self.loop.time()
            if rest > 0:
                self.loop.call_later(rest, self._flush)
            else:
                self.loop.call_soon(self._flush)
        self._dirty.append(session)

    def _flush(self) -> None:
        """Write what every session owes, one write per session.

        After a flush that took a while (one write per recipient is the dominant cost of a
        broadcast), the next one waits as long again, up to 5 ms: events arriving meanwhile
        pile up and leave in fewer, larger writes, so a burst (thousands of users arriving, each
        announced to everyone) costs writes per flush, not per event. A lightly loaded
        server flushes at once.
        """
        start = self.loop.time()
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session.flush()
        end = self.loop.time()
        spent = end - start
        self._rest_until = end + min(spent, FLUSH_REST_MAX) if spent > FLUSH_REST_AFTER else 0.0

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self._no_sessions.clear()
        log.info("connection from %s", session.peer)
        count = self.connections_per_addr.get(session.addr, 0) + 1
        self.connections_per_addr[session.addr] = count
        limit = self.config.max_connections_per_ip
        if limit and count > limit:
            session.fail(
                ProtocolError(ErrorCode.RATE_LIMITED, f"more than {limit} connections from you")
            )

    def session_closed(self, session: Session, exc: Exception | None) -> None:
        if session in self.sessions:
            count = self.connections_per_addr.pop(session.addr, 1) - 1
            if count > 0:
                self.connections_per_addr[session.addr] = count
        self.sessions.discard(session)
        if not self.sessions:
            self._no_sessions.set()
        log.info(
            "connection %s (%s) closed%s", session.peer, session.nick, f": {exc}" if exc else ""
        )
        if session.user is not None:
            self.spawn(self._leave(session))

    async def all_closed(self) -> None:
        await self._no_sessions.wait()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a task the server waits for at shutdown (request handling, leaving)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def drain_tasks(self, timeout: float) -> None:
        """Wait for request handling to finish; cancel what is still stuck after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("cancelling %d requests still running at shutdown", len(self._tasks))
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)

    @staticmethod
    def reply(session: Session, request: Request, body: dict[str, Any]) -> None:
        """Send ``ok`` (or another reply type) carrying the request's id, if it had one."""
        message: dict[str, Any] = {"type": "ok"}
        if request.id is not None:
            message["id"] = request.id
        message.update(body)
        session.send(encode_message(message))

    async def handle_batch(self, session: Session, items: list[bytes | ProtocolError]) -> None:
        """Handle a session's requests in order.

        A run of ``say``/``dm``/``announce`` is started together, so its messages share one
        commit, and finished in request order: each reply, then the events it caused. Any
        other request first waits for the run before it, so replies never overtake.
        """
        run: list[_Append | ProtocolError] = []
        for item in items:
            if session.closing:
                break
            request: Request | None = None
            try:
                if isinstance(item, ProtocolError):
                    raise item  # the decoder lost framing after the frames before it
                request = parse_request(item, self.limits)
                if session.user is None and not request.before_hello:
                    raise ProtocolError(ErrorCode.HELLO_REQUIRED, "say hello first")
                if isinstance(request, RATE_LIMITED_TYPES) and not session.bucket.take():
                    raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
                starter = self._appenders.get(type(request))
                if starter is not None:
                    run.append(starter(session, request))
                    continue
                await self._finish_run(session, run)
                await self._handlers[type(request)](session, request)
                # Its reply is queued: events held for it may follow.
                self.fanout.release(session)
            except ProtocolError as exc:
                if exc.request_id is None and request is not None:
                    exc.request_id = request.id
                if run and not exc.fatal:
                    run.append(exc)
                    continue
                await self._finish_run(session, run)
                session.send_error(exc)
                self.fanout.release(session)
            except Exception:
                log.exception("internal error handling a request from %s", session.peer)
                await self._finish_run(session, run)
                session.send_error(_internal(request))
                self.fanout.release(session)
        await self._finish_run(session, run)

    async def _finish_run(self, session: Session, run: list[_Append | ProtocolError]) -> None:
        for item in run:
            if isinstance(item, ProtocolError):
                session.send_error(item)
                continue
            try:
                stored = await item.stored
            except ProtocolError as exc:
                session.send_error(exc.with_id(item.request.id))
                continue
            except Exception:
                log.exception("storing a message from %s failed", session.peer)
                session.send_error(_internal(item.request))
                continue
            item.finish(stored)
        run.clear()
        # Every reply of the run is queued: events held for them may follow.
        self.fanout.release(session)

    # -- session ---------------------------------------------------------------------------

    async def on_hello(self, session: Session, req: Hello) -> None:
        if session.user is not None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "hello was already said")
        key = req.nick.lower()
        record = await self.store.lookup_user(key)
        account = record.account if record else None
        if account is not None or req.token is not None:
            session.credential = await self._authenticate(session, key, req, account)
        elif self.config.require_account:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "this server admits registered users only")
        if record is None:
            await self.store.remember_user(req.nick)
        admin = account is not None and account.admin
        first = await self.fanout.connect(session, req.nick, admin=admin, exclusive=account is None)
        user = session.user
        assert user is not None
        if session.closing:
            # The connection went away while we awaited: undo the presence it just gained.
            self.spawn(self._leave(session))
            return
        log.info("%s is %s%s", session.peer, user.nick, " (admin)" if admin else "")
        welcome: dict[str, Any] = {
            "proto": PROTOCOL_VERSION,
            "nick": user.nick,
            "server": SERVER_NAME,
            "max_frame": self.config.max_frame,
            "max_text": self.config.max_text,
            "admin": admin,
        }
        if self.config.motd:
            welcome["motd"] = self.config.motd
        self.reply(session, req, {"type": "welcome", **welcome})
        if first:
            self.fanout.to_everyone(
                encode_message({"type": "online", "nick": user.nick, "ts": now()})
            )
        await self._deliver_undelivered_dms(user)

    async def _deliver_undelivered_dms(self, user: User) -> None:
        user.dm_fetches += 1
        try:
            payloads = await self.store.take_pending(user.key)
        finally:
            user.dm_fetches -= 1
        for payload in payloads:
            self.fanout.to_users((user.key,), encode_frame(payload))
        if not user.dm_fetches and user.dm_held:
            held, user.dm_held = user.dm_held, []
            for frame in held:
                self.fanout.to_users((user.key,), frame)

    async def _authenticate(
        self, session: Session, key: str, req: Hello, account: Account | None
    ) -> Credential:
        """Check a password or token; an address that failed too often is not checked at all.

        The block is checked again right before each scrypt run: parallel guesses wait for a
        free slot, and by then the failures before them count, so at most ``auth_failures``
        plus ``MAX_PARALLEL_PASSWORD_CHECKS - 1`` guesses per window get through.
        """
        if req.token is None and req.password is None:
            raise ProtocolError(ErrorCode.AUTH_FAILED, f"{req.nick} needs its password or a token")
        limiter, addr = self.auth_limiter, session.addr
        blocked = ProtocolError(
            ErrorCode.RATE_LIMITED, "too many failed logins from your address; try later"
        )
        if limiter.blocked(addr):
            raise blocked
        ok = False
        if account is not None and req.token is not None:
            credential = ("token", hash_token(req.token))
            ok = await self.store.token_owner(credential[1]) == key
        elif account is not None and req.password is not None and account.password_hash:
            credential = ("password", account.password_hash)
            async with self._password_checks:
                if limiter.blocked(addr):
                    raise blocked
                ok = await asyncio.to_thread(verify_password, req.password, account.password_hash)
        if ok:
            return credential
        limiter.record(addr)
        raise ProtocolError(ErrorCode.AUTH_FAILED, f"wrong password or token for {req.nick}")

    async def recheck_credentials(self) -> None:
        """Close sessions whose token was revoked, or account removed or re-passworded since.

        Logins read accounts through at every hello; this extends that to sessions already
        logged in, so ``imchat token revoke`` and ``imchat user remove``/``passwd`` take hold
        within ``auth_recheck`` seconds. Each distinct credential is looked up once.
        """
        valid: dict[tuple[str, Credential], bool] = {}
        for session in list(self.sessions):
            user, credential = session.user, session.credential
            if user is None or credential is None or session.closing:
                continue
            check = (user.key, credential)
            if check not in valid:
                try:
                    valid[check] = await self._still_valid(*check)
                except Exception:
                    log.exception("could not re-check credentials of %s", user.nick)
                    valid[check] = True  # a store hiccup is no reason to log everyone out
            if not valid[check]:
                session.fail(
                    ProtocolError(ErrorCode.AUTH_FAILED, "your token or password was revoked")
                )

    async def _still_valid(self, key: str, credential: Credential) -> bool:
        kind, value = credential
        if kind == "token":
            return await self.store.token_owner(value) == key
        record = await self.store.lookup_user(key)
        account = record.account if record is not None else None
        return account is not None and account.password_hash == value

    async def _leave(self, session: Session) -> None:
        rooms = await self.fanout.disconnect(session)
        if rooms is None:
            return
        user = session.user
        assert user is not None
        ts = now()
        for room in rooms:
            self.fanout.to_room(
                room,
                encode_message(
                    {"type": "parted", "room": room, "nick": user.nick, "ts": ts, "reason": "quit"}
                ),
            )
        self.fanout.to_everyone(encode_message({"type": "offline", "nick": user.nick, "ts": ts}))

    async def on_ping(self, session: Session, req: Ping) -> None:
        self.reply(session, req, {"type": "pong"})

    async def on_bye(self, session: Session, req: Bye) -> None:
        session.close()

    # -- rooms -----------------------------------------------------------------------------

    async def on_join(self, session: Session, req: Join) -> None:
        user = self._user(session)
        info = await self.store.room(req.room) or await self.store.create_room(req.room)
        if self.fanout.user(user.key) is not user:
            return  # its last session ended while we awaited: joining now leaves a ghost member
        joined = await self.fanout.join(session, req.room)
        members = await self.fanout.members(req.room)
        self.reply(
            session,
            req,
            {"room": req.room, "topic": info.topic, "members": members, "last_seq": info.last_seq},
        )
        if joined:
            self.fanout.to_room(
                req.room,
                encode_message(
                    {"type": "joined", "room": req.room, "nick": user.nick, "ts": now()}
                ),
            )

    async def on_part(self, session: Session, req: Part) -> None:
        user = self._member(session, req.room)
        send = await self.fanout.part(session, req.room)
        self.reply(session, req, {})
        if not send:
            return
        frame = encode_message({"type": "parted", "room": req.room, "nick": user.nick, "ts": now()})
        self.fanout.to_room(req.room, frame)
        self.fanout.to_users((user.key,), frame)

    def start_say(self, session: Session, req: Say) -> _Append:
        user = self._member(session, req.room)
        event: dict[str, Any] = {
            "type": "msg",
            "room": req.room,
            "from": user.nick,
            "text": req.text,
        }
        if req.kind is not None:
            event["kind"] = req.kind

        def finish(stored: Stored) -> None:
            self.reply(session, req, {"seq": stored.seq, "ts": stored.ts})
            if not (stored.duplicate or stored.published):
                self.fanout.to_room(req.room, encode_frame(stored.payload))

        hold = self.fanout.hold(session)
        draft = Draft(room_stream(req.room), user.key, req.cid, event, hold=hold)
        return _Append(req, self._append(draft), finish)

    def _append(self, draft: Draft) -> asyncio.Future[Stored]:
        # Tasks start in creation order, so messages reach the store in request order.
        return asyncio.ensure_future(self.store.append(draft))

    async def on_topic(self, session: Session, req: Topic) -> None:
        user = self._member(session, req.room)
        await self.store.set_topic(req.room, req.text)
        self.reply(session, req, {})
        self.fanout.to_room(
            req.room,
            encode_message(
                {"type": "topic", "room": req.room, "topic": req.text, "by": user.nick, "ts": now()}
            ),
        )

    async def on_rooms(self, session: Session, req: Rooms) -> None:
        counts = await self.fanout.member_counts()
        rooms = [
            {"room": info.name, "count": counts.get(info.name, 0), "topic": info.topic}
            for info in sorted(await self.store.rooms(), key=lambda info: info.name)
        ]
        self.reply(session, req, {"rooms": rooms})

    # -- direct messages, announcements, presence, history ---------------------------------

    def start_dm(self, session: Session, req: Dm) -> _Append:
        """Store a DM and hand it to the recipient exactly once, live or at its next hello.

        To a recipient online and settled, the DM goes out live. Otherwise it is stored as
        undelivered; if the recipient is online by the time it is committed, it is claimed
        (atomically, in the store) for live delivery, unless a ``hello`` fetched it first.
        """
        user = self._user(session)
        to_key = req.to.lower()
        stream = dm_stream(user.key, to_key)
        recipient = self.fanout.user(to_key)
        to_self = to_key == user.key
        live = to_self or (recipient is not None and not recipient.dm_fetches)
        hold = self.fanout.hold(session)

        async def append() -> Stored:
            to_nick = recipient.nick if recipient is not None else None
            if to_nick is None:
                record = await self.store.lookup_user(to_key)
                if record is None:
                    raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.to}")
                to_nick = record.nick
            event = {"type": "dm", "from": user.nick, "to": to_nick, "text": req.text}
            pending_for = None if live else to_key
            draft = Draft(stream, user.key, req.cid, event, pending_for, hold=hold)
            return await self.store.append(draft)

        def finish(stored: Stored) -> None:
            self.reply(session, req, {"seq": stored.seq, "ts": stored.ts})
            if stored.duplicate or stored.published:
                return
            frame = encode_frame(stored.payload)
            self.fanout.to_users((user.key,), frame)
            if to_self:
                return
            if live:
                self._hand_over_dm(to_key, stream, stored.seq, frame)
            elif self.fanout.user(to_key) is not None:
                self.spawn(self._claim_dm(to_key, stream, stored.seq, frame))

        return _Append(req, asyncio.ensure_future(append()), finish)

    async def _claim_dm(self, to_key: str, stream: str, seq: int, frame: bytes) -> None:
        if await self.store.claim_pending(to_key, stream, seq):
            self._hand_over_dm(to_key, stream, seq, frame)
        # else a hello fetched it and delivered it

    def _hand_over_dm(self, to_key: str, stream: str, seq: int, frame: bytes) -> None:
        recipient = self.fanout.user(to_key)
        if recipient is None:
            # Gone between the check and the commit: deliver at the next hello.
            self.spawn(self.store.set_pending(to_key, stream, seq))
        elif recipient.dm_fetches:
            recipient.dm_held.append(frame)  # after the older DMs being fetched
        else:
            self.fanout.to_users((to_key,), frame)

    def start_announce(self, session: Session, req: Announce) -> _Append:
        user = self._user(session)
        if not user.admin:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only admins may announce")
        event = {"type": "announce", "from": user.nick, "text": req.text}

        def finish(stored: Stored) -> None:
            if stored.duplicate:
                delivered = 0
            elif stored.delivered is not None:
                delivered = stored.delivered
            else:
                delivered = self.fanout.session_count()
            self.reply(session, req, {"seq": stored.seq, "ts": stored.ts, "delivered": delivered})
            if not (stored.duplicate or stored.published):
                self.fanout.to_everyone(encode_frame(stored.payload))

        draft = Draft(ANNOUNCE_STREAM, user.key, req.cid, event, hold=self.fanout.hold(session))
        return _Append(req, self._append(draft), finish)

    async def on_users(self, session: Session, req: Users) -> None:
        self.reply(session, req, {"users": await self.fanout.online()})

    async def on_history(self, session: Session, req: History) -> None:
        user = self._user(session)
        if req.room is not None:
            if await self.store.room(req.room) is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"no room called {req.room}")
            stream = room_stream(req.room)
        elif req.with_ is not None:
            other = req.with_.lower()
            if await self.store.lookup_user(other) is None and self.fanout.user(other) is None:
                raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.with_}")
            stream = dm_stream(user.key, other)
        else:
            stream = ANNOUNCE_STREAM
        payloads = await self.store.history(
            stream, after=req.after, before=req.before, limit=req.effective_limit
        )
        self.reply(session, req, {"messages": [msgspec.Raw(p) for p in payloads]})

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _user(session: Session) -> User:
        assert session.user is not None  # guaranteed by the hello_required check
        return session.user

    def _member(self, session: Session, room: str) -> User:
        user = self._user(session)
        if not self.fanout.is_member(user, room):
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room}")
        return user
