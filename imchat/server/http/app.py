"""The HTTP face of the server: one aiohttp application in the server's own event loop.

Routes come from small modules (``api``, ``hooks``, ``ws``, ``ops``); this one builds the
application, answers every failure as the protocol's JSON error, counts requests for
``/metrics``, and starts and stops the listener alongside the native one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from imchat.protocol import ErrorCode
from imchat.server.addrcounts import AddressCounts
from imchat.server.hookstore import HookStore
from imchat.server.hub import Hub
from imchat.server.listener import DEFAULT_BACKLOG, FALLBACK_HANDSHAKE_TIMEOUT

from . import api, hooks, ops, parserlog, ws
from .admission import TlsAdmission, peer_key
from .callers import Callers
from .errors import ApiError, error_response
from .metrics import Probes, ServerCollector

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How long in-flight HTTP requests may take to finish at shutdown.
SHUTDOWN_TIMEOUT = 5.0
#: Seconds an idle HTTP connection (also one that never sends a request) stays open.
KEEPALIVE_TIMEOUT = 15.0
#: Header fields a request may have, each of up to 8190 bytes as aiohttp allows: a head of
#: under 400 KiB. aiohttp's 128 made 1 MiB heads, which a WebSocket session keeps for its
#: life (2.4 MB of RSS each, measured): 128 of them pinned 300 MB per address.
MAX_HEADERS = 48
#: Seconds the server's writes to a connection may stay paused (the client reads nothing)
#: before the connection is aborted: aiohttp has no write deadline of its own.
WRITE_STALL_TIMEOUT = 30.0


class HttpFrontend:
    """``start(host, port)`` serves the HTTP API, webhooks, ``/ws``, ``/healthz``, ``/metrics``."""

    def __init__(self, hub: Hub, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.hub = hub
        self.ssl_context = ssl_context
        store: Any = hub.store
        self.hook_store: HookStore | None = store if isinstance(store, HookStore) else None
        redis = getattr(store, "redis", None)
        self.redis_ping: Callable[[], Awaitable[Any]] | None = (
            redis.ping if redis is not None else None
        )
        self.callers = Callers(hub)
        self.closing = False
        self.port = 0
        self.requests: dict[tuple[str, int], int] = {}
        #: Open HTTP connections per client address (IPv6: per /64), at most
        #: ``max_connections_per_ip`` each; counted at accept (with TLS too).
        self.addresses = AddressCounts()
        self.connections_per_addr = self.addresses.counts
        self.probes = Probes()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ServerCollector(self))
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tls_server: asyncio.Server | None = None
        self._admission: TlsAdmission | None = None

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors],
            client_max_size=hooks.HOOK_MAX_BODY,
        )
        app.add_routes(
            [*api.routes(self), *hooks.routes(self), *ws.routes(self), *ops.routes(self)]
        )
        return app

    async def ping_store(self) -> None:
        if self.hook_store is not None:
            await self.hook_store.ping()
        else:
            await self.hub.store.lookup_user("admin")

    async def start(self, host: str, port: int) -> int:
        parserlog.install(self.hub.config.error_log_interval)
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        self._guard_connections(self._runner.server)
        try:
            if self.ssl_context is None:
                self._limit_connections(self._runner.server)
                self._site = web.TCPSite(
                    self._runner,
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self.hub.config.reuse_port or None,
                )
                await self._site.start()
                server = self._site._server
            else:
                server = self._tls_server = await self._start_tls(host, port)
        except BaseException:
            await self._runner.cleanup()
            raise
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self.probes.start(self.redis_ping)
        scheme = "https" if self.ssl_context is not None else "http"
        log.info("HTTP API at %s://%s:%d", scheme, host, self.port)
        return self.port

    async def _start_tls(self, host: str, port: int) -> asyncio.Server:
        """The HTTPS listener: aiohttp's ``TCPSite`` would make it with ``ssl=``, but then a
        connection is counted only after its handshake (see :mod:`.admission`), and with
        asyncio's 60 s deadline; here it is counted at accept and the handshake has the
        native port's deadline (``hello_timeout``)."""
        assert self._runner is not None and self._runner.server is not None
        assert self.ssl_context is not None
        admission = self._admission = TlsAdmission(
            self.addresses,
            self.hub.config.max_connections_per_ip,
            self._runner.server,
            self.ssl_context,
            self.hub.config.hello_timeout or FALLBACK_HANDSHAKE_TIMEOUT,
        )
        return await asyncio.get_running_loop().create_server(
            admission,
            host,
            port,
            reuse_address=True,
            reuse_port=self.hub.config.reuse_port or None,
            backlog=DEFAULT_BACKLOG,
        )

    def _guard_connections(self, server: web.Server | None) -> None:
        """Every connection (plain or TLS, reported once its transport is ready) gets the
        send buffer native sockets get (``--socket-send-buffer``: the kernel would grow a
        non-reader's to 4 MiB) and a :class:`StallGuard` between its transport and aiohttp's
        handler, which aborts it when the writes stay paused ``WRITE_STALL_TIMEOUT``."""
        if server is None:
            return
        made = server.connection_made
        send_buffer = self.hub.config.socket_send_buffer

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if send_buffer:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            transport.set_protocol(StallGuard(handler, transport, WRITE_STALL_TIMEOUT))

        server.connection_made = connection_made  # type: ignore[method-assign]

    def _limit_connections(self, server: web.Server | None) -> None:
        """Plain HTTP: aiohttp reports each connection's start (at accept, before it reads a
        byte) and end to its ``Server``; these wrap those two calls to count it. One beyond
        ``max_connections_per_ip`` from its address (IPv6: /64) is dropped at once."""
        if server is None:
            return
        made, lost = server.connection_made, server.connection_lost
        addresses, limit = self.addresses, self.hub.config.max_connections_per_ip
        addrs: dict[object, str] = {}

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            addr = peer_key(transport)
            if addresses.admit(addr, limit):
                addrs[handler] = addr
            else:
                transport.abort()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            addr = addrs.pop(handler, None)
            if addr is not None:
                addresses.release(addr)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    async def stop_accepting(self) -> None:
        """Refuse new work: the API answers 503 from now on (WebSocket sessions are closed
        with the TCP ones, by ``shutting_down``)."""
        self.closing = True

    async def close(self) -> None:
        self.closing = True
        await self.probes.stop()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        if self._admission is not None:
            self._admission.abort_handshakes()  # no handler of aiohttp's knows them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._admission is not None:
            # What aiohttp left (a handshake done during its cleanup, a TLS close unanswered).
            await self._admission.close(SHUTDOWN_TIMEOUT)
            self._admission = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        response: web.StreamResponse
        try:
            if not name.startswith(("/healthz", "/metrics")):
                if self.closing:
                    raise ApiError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
                if not self.hub.fanout.available:
                    # As a native hello is answered meanwhile; not ``internal`` from the
                    # token's store read: nothing was tried, a retry later will do.
                    raise ApiError(ErrorCode.SHUTTING_DOWN, "server lost its cluster store")
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(ErrorCode.BAD_REQUEST, exc.reason, status=exc.status)
            if "Allow" in exc.headers:  # a 405 names the methods there are (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            response = error_response(ErrorCode.INTERNAL, "internal server error")
        key = (name, response.status)
        self.requests[key] = self.requests.get(key, 0) + 1
        return response


class StallGuard(asyncio.Protocol):
    """Between a connection's transport and aiohttp's handler: passes every call on, and
    aborts the connection when its writes stay paused ``timeout`` seconds (the client reads
    nothing; a slow reader lets them resume, which starts the count again). aiohttp's
    handler has slots, so its own ``pause_writing`` cannot be wrapped in place."""

    def __init__(self, handler: asyncio.Protocol, transport: asyncio.Transport, timeout: float):
        self.handler = handler
        self.transport = transport
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._stalled)

    def resume_writing(self) -> None:
        self._cancel()
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.handler.connection_lost(exc)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        log.info(
            "HTTP client %s read nothing for %.0f s: connection closed",
            peer_key(self.transport),
            self.timeout,
        )
        self.transport.abort()
