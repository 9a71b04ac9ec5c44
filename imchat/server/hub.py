"""The dispatcher: a session's requests, in order, to their handlers.

The hub owns the server's parts (:class:`Context`) and nothing else of substance: who is
connected is the :class:`Registry`'s, authentication the :class:`Authenticator`'s, what each
request does its handler's (:mod:`imchat.server.handlers`), and how a run of pipelined
messages is answered :mod:`imchat.server.appends`'s. Transports (the native
:class:`~imchat.server.session.Session`, the IRC and HTTP adapters) talk to the hub through
:meth:`session_opened`, :meth:`handle_batch` and :meth:`session_closed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from imchat.protocol import ErrorCode, Limits, ProtocolError, Request, parse_request

from .addrlimits import AddressLimits, LocalAddressLimits
from .appends import Run, finish_run, internal_error
from .authn import Authenticator
from .budgets import Buckets, LocalBuckets
from .config import ServerConfig
from .context import Context
from .dm_delivery import DmDelivery
from .fanout import Fanout
from .handlers import APPENDERS, HANDLERS, RATE_LIMITED_TYPES, READ_LIMITED_TYPES, leave
from .peer import Peer, budget_key
from .ratelimit import FailureLimiter, TokenBucket
from .registry import Registry
from .room_budget import RoomBudget
from .stats import STATS
from .store import Store

log = logging.getLogger(__name__)

#: Bytes a session reads from its socket at most at a time (see ``Session.get_buffer``).
READ_SIZE = 65536


class Hub:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        fanout: Fanout,
        addr_limits: AddressLimits | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        self.config = config
        if addr_limits is None:
            addr_limits = LocalAddressLimits(
                config.addr_rate, config.addr_burst, config.auth_failures, config.auth_window
            )
        if buckets is None:
            buckets = LocalBuckets()
        self.store = store
        self.fanout = fanout
        self.loop = asyncio.get_running_loop()
        self.registry = registry = Registry(self.loop, config.max_output_total)
        self.authn = Authenticator(config, store, addr_limits)
        self.ctx = Context(
            config=config,
            store=store,
            fanout=fanout,
            registry=registry,
            authn=self.authn,
            dms=DmDelivery(store, fanout, registry),
            limits=Limits(max_text=config.max_text, max_topic=config.max_topic),
            addr_limits=addr_limits,
            room_budget=RoomBudget(config, buckets, store),
            buckets=buckets,
        )
        #: Shared by all sessions: each read is consumed before the next one starts.
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        #: The read budgets of guest addresses and accounts (``addr_read_rate``). In this
        #: process's memory even on the Redis backend: a read then costs no Redis round trip
        #: more, and is still answered while Redis refuses writes (a node bounds what it
        #: serves; a cluster of N nodes allows an address N times as much).
        self.read_buckets = LocalBuckets()

    # -- the registry's, for transports and the server --------------------------------------

    @property
    def sessions(self) -> set[Peer]:
        return self.registry.sessions

    @property
    def connections_per_addr(self) -> dict[str, int]:
        return self.registry.connections_per_addr

    @property
    def auth_limiter(self) -> FailureLimiter:
        return self.authn.limiter

    def new_bucket(self) -> TokenBucket:
        return TokenBucket(self.config.rate, self.config.burst)

    def new_read_bucket(self) -> TokenBucket:
        return TokenBucket(self.config.read_rate, self.config.read_burst)

    async def _spend_shared_read(self, session: Peer) -> ProtocolError | None:
        """Spend a token of the reads ``session`` shares with the other guests of its address,
        or with its account's other sessions on this node (``addr_read_rate`` after
        ``addr_read_burst``; :func:`.peer.budget_key`); the refusal if there is none."""
        config = self.config
        if config.addr_read_rate <= 0:
            return None
        key = budget_key(session, self.ctx.user(session))
        if await self.read_buckets.take("read", key, config.addr_read_rate, config.addr_read_burst):
            return None
        whose = "your account" if key.startswith("u:") else "your address"
        return ProtocolError(ErrorCode.RATE_LIMITED, f"too many reads from {whose}; slow down")

    def spawn(self, coro: Awaitable[None]) -> None:
        self.registry.spawn(coro)

    async def drain_tasks(self, timeout: float) -> None:
        await self.registry.drain_tasks(timeout)

    async def all_closed(self) -> None:
        await self.registry.all_closed()

    async def recheck_credentials(self) -> None:
        await self.authn.recheck(self.registry.sessions)

    # -- session lifecycle -----------------------------------------------------------------

    def session_opened(self, session: Peer) -> None:
        # Debug only: at info a connection is logged by its hello and its end (a connect
        # storm paid a formatted record and a write to stderr for each line).
        log.debug("connection from %s", session.peer)
        admitted = bool(getattr(session, "admitted", False))
        count = self.registry.add(session, counted=admitted)
        limit = self.config.max_connections_per_ip
        if limit and count > limit and not admitted:
            session.fail(
                ProtocolError(ErrorCode.RATE_LIMITED, f"more than {limit} connections from you")
            )

    def session_closed(self, session: Peer, exc: Exception | None) -> None:
        self.registry.remove(session)
        log.info(
            "connection %s (%s) closed%s", session.peer, session.nick, f": {exc}" if exc else ""
        )
        if session.user is not None:
            self.registry.spawn(leave(self.ctx, session))

    # -- requests --------------------------------------------------------------------------

    async def handle_batch(
        self, session: Peer, items: list[bytes | ProtocolError]
    ) -> list[bytes | ProtocolError]:
        """Handle a session's requests in order; the ones left for later (returned).

        Replies count like events: once the session owes its client more than ``max_buffer``
        (replies queued by this batch included), the rest of the batch waits until the client
        has read, so 64 pipelined requests for the largest reply cannot make the server hold
        64 such replies for one connection.

        A run of ``say``/``dm``/``announce`` is started together, so its messages share one
        commit, and finished in request order: each reply, then the events it caused. Any
        other request first waits for the run before it, so replies never overtake.
        """
        ctx, fanout = self.ctx, self.fanout
        max_buffer = self.config.max_buffer
        # The address budget of this process (LocalAddressLimits) is taken without a
        # coroutine per message; a shared one (Redis) is awaited.
        take_now: Callable[[str], bool] | None = getattr(ctx.addr_limits, "take_now", None)
        # ... and neither is asked when it allows everything (``addr_rate`` 0): a shared
        # one's ``take`` answers True without Redis then, and was a coroutine per message
        # (and a wait, after which the output bound was checked again).
        addr_free = getattr(ctx.addr_limits, "rate", 1) <= 0
        limits = ctx.limits
        rated = self.config.rate > 0
        run: Run = []
        # The bound on output was checked and nothing could have changed it since: only
        # appends were started since, without awaiting (they queue no reply before the
        # run's end, and no other task ran), so a burst of says checks it once, not per say.
        checked = False
        for index, item in enumerate(items):
            if session.closing:
                break
            if index and not checked:
                if getattr(session, "owed", 0) > max_buffer or self.registry.saturated():
                    await finish_run(session, run, fanout)
                    return items[index:]
                checked = True
            quiet = checked
            checked = False
            request: Request | None = None
            try:
                if isinstance(item, ProtocolError):
                    raise item  # the decoder lost framing after the frames before it
                request = parse_request(item, limits)
                if session.user is None and not request.before_hello:
                    raise ProtocolError(ErrorCode.HELLO_REQUIRED, "say hello first")
                if isinstance(request, RATE_LIMITED_TYPES):
                    # Every session's bucket is made with config.rate: with rate 0 it allows
                    # everything, so it is not even made (two calls a message).
                    if rated and not session.bucket.take():
                        STATS.rate_limited += 1
                        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
                    if addr_free:
                        allowed = True
                    elif take_now is not None:
                        allowed = take_now(session.addr)
                    else:
                        quiet = False  # it may wait: other tasks run meanwhile
                        allowed = await ctx.addr_limits.take(session.addr)
                    if not allowed:
                        STATS.rate_limited += 1
                        raise ProtocolError(
                            ErrorCode.RATE_LIMITED, "too many messages from your address"
                        )
                elif isinstance(request, READ_LIMITED_TYPES):
                    if not session.read_bucket.take():
                        STATS.rate_limited += 1
                        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many reads; slow down")
                    refusal = await self._spend_shared_read(session)
                    if refusal is not None:
                        STATS.rate_limited += 1
                        raise refusal
                starter = APPENDERS.get(type(request))
                if starter is not None:
                    run.append(starter(ctx, session, request))
                    checked = quiet
                    continue
                await finish_run(session, run, fanout)
                await HANDLERS[type(request)](ctx, session, request)
                # Its reply is queued: events held for it may follow.
                fanout.release(session)
            except ProtocolError as exc:
                if exc.request_id is None and request is not None:
                    exc.request_id = request.id
                if run and not exc.fatal:
                    run.append(exc)
                    continue
                await finish_run(session, run, fanout)
                session.send_error(exc)
                fanout.release(session)
            except Exception:
                log.exception("internal error handling a request from %s", session.peer)
                await finish_run(session, run, fanout)
                session.send_error(internal_error(request))
                fanout.release(session)
        await finish_run(session, run, fanout)
        return []
