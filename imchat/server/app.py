"""The server process: listening socket, admin bootstrap, idle sweep, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

from imchat.protocol import ErrorCode, ProtocolError

from . import logthrottle
from .addrlimits import AddressLimits, LocalAddressLimits, RedisAddressLimits
from .backend import open_backend
from .budgets import Buckets, LocalBuckets, RedisBuckets
from .config import ServerConfig
from .datadir import (
    MARKER_FILE,
    ensure_admin,
    make_private,
    refuse_if_lost,
    store_is_empty,
    write_marker,
)
from .fanout import Fanout
from .gcpolicy import FreezePolicy
from .hub import Hub
from .listener import Listener
from .session import AdmittedSession, flush_all
from .sqlite_store import SQLiteStore
from .store import Store, StoreUnavailable
from .sweep import IdleSweep
from .tls import server_context

if TYPE_CHECKING:
    from .http import HttpFrontend

log = logging.getLogger(__name__)


#: Seconds between retention passes (the first runs at start).
PRUNE_INTERVAL = 300.0
#: How long shutdown waits for clients to take their last frames.
SHUTDOWN_GRACE = 5.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class ChatServer:
    """An imchat server bound to ``config.host:config.port`` (port 0 picks a free one)."""

    def __init__(
        self, config: ServerConfig, *, store: Store | None = None, fanout: Fanout | None = None
    ) -> None:
        self.config = config
        if store is None or fanout is None:
            if store is not None or fanout is not None:
                raise ValueError("pass both a store and its fanout, or neither")
            backend = open_backend(config)
            store, fanout = backend.store, backend.fanout
        self.store: Store = store
        self.fanout: Fanout = fanout
        self.hub: Hub | None = None
        self.port = config.port
        self._listener: Listener | None = None
        self._irc_servers: list[Listener] = []
        #: Bound IRC ports (plain, TLS) once started; None where that listener is off.
        self.irc_ports: tuple[int | None, int | None] = (None, None)
        #: The HTTP face, with ``config.http_port`` (see docs/http.md).
        self.http: HttpFrontend | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        #: Keeps full garbage collections from visiting the long-lived sessions (see
        #: :mod:`.gcpolicy`); ticked by the idle sweep.
        self.gc_policy = FreezePolicy()

    async def start(self) -> None:
        data_dir = Path(self.config.data_dir)
        # Private on every start: it holds password hashes, every DM and the admin token.
        make_private(data_dir)
        logthrottle.install(self.config.error_log_interval)
        tls = None
        if self.config.tls_cert is not None or self.config.tls_key is not None:
            if self.config.tls_cert is None or self.config.tls_key is None:
                raise ValueError("TLS needs both a certificate and a key")
            tls = server_context(self.config.tls_cert, self.config.tls_key)
        await self._open_store(data_dir)
        self.hub = hub = Hub(
            self.config, self.store, self.fanout, self._address_limits(), self._buckets()
        )
        hub.registry.flush_dirty = flush_all  # its sessions (native, IRC) flushed inline
        try:
            await self.fanout.open(hub.registry)
            await hub.authn.start()
        except BaseException:
            await self.store.close()
            raise
        self._listener = listener = Listener(
            hub.registry,
            lambda: AdmittedSession(hub),
            max_per_addr=self.config.max_connections_per_ip,
            tls=tls,
            # A peer that never finishes its handshake is a slowloris too.
            handshake_timeout=self.config.hello_timeout,
            send_buffer=self.config.socket_send_buffer,
        )
        try:
            self.port = await listener.start(
                self.config.host,
                self.config.port,
                self.config.listen_backlog,
                reuse_port=self.config.reuse_port,
            )
        except BaseException:
            # Leave no trace: a clustered fanout has joined the cluster by now.
            await self.fanout.close()
            await self.store.close()
            raise
        if self.config.irc_port is not None or self.config.irc_tls_port is not None:
            await self._start_irc(hub, tls)
        if self.config.http_port is not None:
            await self._start_http(hub, tls)
        self._sweeper = asyncio.create_task(self._sweep_idle())
        if self.config.retain_days > 0 or self.config.retain_messages > 0:
            self._pruner = asyncio.create_task(self._prune_periodically())
        log.info("data directory %s", data_dir.resolve())
        log.info("listening on %s:%d%s", self.config.host, self.port, " (TLS)" if tls else "")

    async def _start_irc(self, hub: Hub, tls: ssl.SSLContext | None) -> None:
        from .irc import start_irc_listeners

        try:
            self._irc_servers = await start_irc_listeners(
                hub, self.config.host, self.config.irc_port, self.config.irc_tls_port, tls
            )
        except BaseException:
            await self._abort_start()
            raise
        ports = iter(s.port for s in self._irc_servers)
        plain = next(ports) if self.config.irc_port is not None else None
        secure = next(ports) if self.config.irc_tls_port is not None else None
        self.irc_ports = (plain, secure)

    async def _start_http(self, hub: Hub, tls: ssl.SSLContext | None) -> None:
        # Imported here: a server without the HTTP face never loads aiohttp.
        from .http import HttpFrontend

        assert self.config.http_port is not None
        self.http = HttpFrontend(hub, ssl_context=tls)
        try:
            await self.http.start(self.config.host, self.config.http_port)
        except BaseException:
            await self._abort_start()
            raise

    async def _abort_start(self) -> None:
        """A listener beside the native one could not start: undo what did."""
        assert self._listener is not None
        self._listener.close()
        for irc in self._irc_servers:
            irc.close()
        await self.fanout.close()
        await self.store.close()

    def _address_limits(self) -> AddressLimits:
        """Per-address budgets: in Redis when the store is, so every node shares them."""
        config = self.config
        redis = getattr(self.store, "redis", None)
        if config.redis_url is not None and redis is not None:
            return RedisAddressLimits(
                redis,
                self.store.keys.prefix,  # type: ignore[attr-defined]  # RedisStore's (tagged)
                config.addr_rate,
                config.addr_burst,
                config.auth_failures,
                config.auth_window,
            )
        return LocalAddressLimits(
            config.addr_rate, config.addr_burst, config.auth_failures, config.auth_window
        )

    def _buckets(self) -> Buckets:
        """Budgets of new rooms and guests: in Redis when the store is (a cluster shares them)."""
        redis = getattr(self.store, "redis", None)
        if self.config.redis_url is not None and redis is not None:
            return RedisBuckets(redis, self.store.keys.prefix)  # type: ignore[attr-defined]
        return LocalBuckets()

    async def _open_store(self, data_dir: Path) -> None:
        """Open the store, refuse an empty one where data was before, ensure the admin.

        Every failure here is :class:`StoreUnavailable` with one line to show (a damaged or
        read-only database, an unreachable Redis), never a traceback.
        """
        fresh = self.config.fresh_store
        served_before = (data_dir / MARKER_FILE).exists()
        sqlite_path = self.store.path if isinstance(self.store, SQLiteStore) else None
        if sqlite_path is not None and not sqlite_path.exists():
            # Checked before opening, which would create it.
            refuse_if_lost(data_dir, store_empty=True, fresh=fresh, what=str(sqlite_path))
        what = str(sqlite_path) if sqlite_path is not None else "the store"
        try:
            await self.store.open()
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"cannot open {what}: {_one_line(exc)}") from None
        try:
            refuse_if_lost(
                data_dir, store_empty=await store_is_empty(self.store), fresh=fresh, what=what
            )
            # Guest identities online or held when the server stopped are held from now on.
            await self.store.hold_guests(self.config.guest_hold)
            await ensure_admin(self.store, data_dir, rotate=served_before)
            write_marker(data_dir)
            make_private(data_dir)  # the files SQLite just created, too
        except BaseException as exc:
            await self.store.close()
            if isinstance(exc, StoreUnavailable) or not isinstance(exc, Exception):
                raise
            raise StoreUnavailable(f"cannot use {what}: {_one_line(exc)}") from None

    async def prune(self, now: float | None = None) -> int:
        """Apply ``retain_days`` and ``retain_messages`` once; the number of messages deleted.

        History then starts at the oldest message kept; no seq is ever handed out again.
        """
        days, keep = self.config.retain_days, self.config.retain_messages
        if days <= 0 and keep <= 0:
            return 0
        before = (time.time() if now is None else now) - days * 86400 if days > 0 else None
        deleted = await self.store.prune(before_ts=before, keep=keep or None)
        if deleted:
            log.info("retention: deleted %d messages", deleted)
        return deleted

    async def _prune_periodically(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("retention: pruning failed")
            await asyncio.sleep(PRUNE_INTERVAL)

    async def _sweep_idle(self) -> None:
        """Close sessions idle for ``idle_timeout`` or without hello after ``hello_timeout``,
        and re-check logged-in sessions' credentials every ``auth_recheck`` seconds.

        One timer for all sessions; a period of 0 is off.
        """
        assert self.hub is not None
        timeout, hello_timeout = self.config.idle_timeout, self.config.hello_timeout
        recheck = self.config.auth_recheck
        interval = min([1.0, *(t / 4 for t in (timeout, hello_timeout, recheck) if t > 0)])
        loop = asyncio.get_running_loop()
        next_recheck = loop.time() + recheck
        sweep = IdleSweep(self.hub.registry, idle_timeout=timeout, hello_timeout=hello_timeout)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            await self.hub.registry.sweep_output()  # an exact count when it can matter
            if recheck > 0 and now >= next_recheck:
                next_recheck = now + recheck
                self.hub.spawn(self.hub.recheck_credentials())
            with_user = await sweep.tick()
            # Sessions with a user: in a connect storm every connection is accepted long
            # before most are served, so connections alone would look settled too early.
            self.gc_policy.tick(with_user)

    async def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        assert self.hub is not None
        # This process is the server's: its setup is permanent.
        self.gc_policy.start(self.hub.fanout.session_count)
        await stop.wait()
        log.info("shutting down")
        await self.stop()
        self.gc_policy.stop()

    async def stop(self) -> None:
        """Tell every session ``shutting_down``, flush, close, and close the store."""
        if self._stopped.is_set() or self.hub is None or self._listener is None:
            return
        self._stopped.set()
        hub = self.hub
        self._listener.close()
        for irc in self._irc_servers:
            irc.close()
        if self.http is not None:
            await self.http.stop_accepting()
        for task in (self._sweeper, self._pruner):
            if task is not None:
                task.cancel()
        sessions = list(hub.sessions)
        for session in sessions:
            session.pause_reading()
        # Let requests already being handled finish, so every ok they earned is sent.
        await hub.drain_tasks(SHUTDOWN_GRACE)
        error = ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
        for session in sessions:
            session.fail(error)
        try:
            await asyncio.wait_for(hub.all_closed(), SHUTDOWN_GRACE)
        except TimeoutError:
            for session in list(hub.sessions):
                session.abort()
        await self._listener.wait_closed()
        for irc in self._irc_servers:
            await irc.wait_closed()
        if self.http is not None:
            await self.http.close()  # in-flight HTTP requests finish while the store is open
        await hub.drain_tasks(SHUTDOWN_GRACE)
        await self.fanout.close()
        await self.store.close()
        log.info("stopped")
