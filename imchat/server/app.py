"""The server process: listening socket, admin bootstrap, idle sweep, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from imchat.protocol import ErrorCode, ProtocolError

from .auth import hash_token, new_token
from .backend import open_backend
from .config import ServerConfig
from .fanout import Fanout
from .hub import Hub
from .session import Session
from .store import Store
from .tls import server_context

if TYPE_CHECKING:
    from .http import HttpFrontend

log = logging.getLogger(__name__)


ADMIN_NICK = "admin"
ADMIN_TOKEN_FILE = "admin.token"
#: How long shutdown waits for clients to take their last frames.
SHUTDOWN_GRACE = 5.0


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
        self._server: asyncio.Server | None = None
        self._irc_servers: list[asyncio.Server] = []
        #: Bound IRC ports (plain, TLS) once started; None where that listener is off.
        self.irc_ports: tuple[int | None, int | None] = (None, None)
        #: The HTTP face, with ``config.http_port`` (see docs/http.md).
        self.http: HttpFrontend | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        data_dir = Path(self.config.data_dir)
        # Private from the start: it holds password hashes and the admin token.
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tls = None
        if self.config.tls_cert is not None or self.config.tls_key is not None:
            if self.config.tls_cert is None or self.config.tls_key is None:
                raise ValueError("TLS needs both a certificate and a key")
            tls = server_context(self.config.tls_cert, self.config.tls_key)
        await self.store.open()
        # Guest identities online or held when the server stopped are held from now on.
        await self.store.hold_guests(self.config.guest_hold)
        await self._ensure_admin(data_dir)
        self.hub = hub = Hub(self.config, self.store, self.fanout)
        try:
            await self.fanout.open(hub.registry)
        except BaseException:
            await self.store.close()
            raise
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: Session(hub),
                self.config.host,
                self.config.port,
                reuse_address=True,
                # asyncio's default of 100 overflows in a reconnect storm: each dropped SYN
                # costs its client a 1-3-7 s retransmit (5,000 at once: 28 s against 2 s).
                backlog=4096,
                ssl=tls,
                # A peer that never finishes its handshake is a slowloris too.
                ssl_handshake_timeout=(self.config.hello_timeout or None) if tls else None,
            )
        except BaseException:
            # Leave no trace: a clustered fanout has joined the cluster by now.
            await self.fanout.close()
            await self.store.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.irc_port is not None or self.config.irc_tls_port is not None:
            await self._start_irc(hub, tls)
        if self.config.http_port is not None:
            await self._start_http(hub, tls)
        self._sweeper = asyncio.create_task(self._sweep_idle())
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
        ports = iter(s.sockets[0].getsockname()[1] for s in self._irc_servers)
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
        assert self._server is not None
        self._server.close()
        for irc in self._irc_servers:
            irc.close()
        await self.fanout.close()
        await self.store.close()

    async def _ensure_admin(self, data_dir: Path) -> None:
        """Create the admin account, or a fresh token for it if its token file is gone."""
        token_file = data_dir / ADMIN_TOKEN_FILE
        record = await self.store.lookup_user(ADMIN_NICK)
        if record is not None and record.account is not None and token_file.exists():
            return
        if record is None or record.account is None:
            await self.store.create_account(ADMIN_NICK, admin=True)
        token = new_token()
        await self.store.add_token(ADMIN_NICK, hash_token(token), "admin.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(token_file, 0o600)
        log.info("admin account %r: token written to %s", ADMIN_NICK, token_file.resolve())

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
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            if recheck > 0 and now >= next_recheck:
                next_recheck = now + recheck
                self.hub.spawn(self.hub.recheck_credentials())
            for session in list(self.hub.sessions):
                if (
                    hello_timeout > 0
                    and session.user is None
                    and session.opened < now - hello_timeout
                ):
                    message = f"no hello within {hello_timeout:g} s"
                    session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))
                elif timeout > 0 and session.last_rx < now - timeout:
                    session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, f"idle for {timeout:g} s"))

    async def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down")
        await self.stop()

    async def stop(self) -> None:
        """Tell every session ``shutting_down``, flush, close, and close the store."""
        if self._stopped.is_set() or self.hub is None or self._server is None:
            return
        self._stopped.set()
        hub = self.hub
        self._server.close()
        for irc in self._irc_servers:
            irc.close()
        if self.http is not None:
            await self.http.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
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
        await self._server.wait_closed()
        for irc in self._irc_servers:
            await irc.wait_closed()
        if self.http is not None:
            await self.http.close()  # in-flight HTTP requests finish while the store is open
        await hub.drain_tasks(SHUTDOWN_GRACE)
        await self.fanout.close()
        await self.store.close()
        log.info("stopped")
