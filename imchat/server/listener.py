"""The listening sockets: accept, count per address, then (maybe) TLS, then a Session.

asyncio's ``create_server`` calls the protocol only after the TLS handshake, so a limit
counted there lets any number of stalled handshakes from one address hold descriptors. Here
each connection is counted the moment it is accepted: one over ``max_connections_per_ip``
is closed at once (plain TCP: after a ``rate_limited`` frame), before any TLS work. The
handshake has a deadline; the accept queue is as deep as a reconnect storm needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from imchat.protocol import encode_message

from . import plaintext
from .ratelimit import address_key
from .registry import Registry

log = logging.getLogger(__name__)

#: Accept-queue length asked for: room for thousands of clients reconnecting at once after a
#: restart (asyncio's default of 100 overflowed 38,946 times in a 5,000-client storm).
DEFAULT_BACKLOG = 4096
#: Connections accepted per readiness event at most (others wait for the next loop turn).
ACCEPT_BATCH = 256
#: Seconds to stop accepting after running out of descriptors (EMFILE) before trying again.
ACCEPT_PAUSE = 0.5
#: Handshake deadline when no hello deadline is configured.
FALLBACK_HANDSHAKE_TIMEOUT = 60.0
SOMAXCONN_PATH = Path("/proc/sys/net/core/somaxconn")


def effective_backlog(wanted: int) -> tuple[int, int | None]:
    """The backlog the kernel will grant (capped by ``net.core.somaxconn``) and that cap."""
    try:
        cap = int(SOMAXCONN_PATH.read_text())
    except (OSError, ValueError):
        return wanted, None
    return min(wanted, cap), cap


class Listener:
    """Listens on ``host:port`` and hands each admitted connection to ``factory()``.

    ``factory`` makes the protocol (a Session marked as already counted); the registry holds
    the count from accept until the session closes, or until its handshake fails.
    """

    def __init__(
        self,
        registry: Registry,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        max_per_addr: int,
        tls: ssl.SSLContext | None,
        handshake_timeout: float,
        send_buffer: int,
        plaintext_reply: Callable[[int], bytes | None] = plaintext.native_reply,
    ) -> None:
        self.registry = registry
        #: With TLS: what a connection whose first byte is not TLS is told, by that byte
        #: (None: nothing), before it is closed (see :mod:`.plaintext`).
        self.plaintext_reply = plaintext_reply
        self.factory = factory
        self.max_per_addr = max_per_addr
        self.tls = tls
        self.handshake_timeout = handshake_timeout or FALLBACK_HANDSHAKE_TIMEOUT
        self.send_buffer = send_buffer
        self.sockets: list[socket.socket] = []
        self.refused = 0
        self._loop = asyncio.get_running_loop()
        self._closed = False
        #: TLS handshakes under way: this listener's own (not the registry's, which the
        #: server waits for at shutdown as requests), cancelled by :meth:`close`.
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refusal = encode_message(
            {
                "type": "error",
                "code": "rate_limited",
                "message": f"more than {max_per_addr} connections from you",
            }
        )

    async def start(self, host: str, port: int, backlog: int, *, reuse_port: bool = False) -> int:
        """Bind and listen; the port bound (``port`` 0 picks one). ``reuse_port``: share it
        with other processes that bind it so (SO_REUSEPORT)."""
        granted, cap = effective_backlog(backlog)
        if cap is not None and granted < backlog:
            log.warning(
                "listen backlog %d capped to %d by net.core.somaxconn; raise it for "
                "reconnect storms (sysctl -w net.core.somaxconn=%d)",
                backlog,
                granted,
                backlog,
            )
        infos = await self._loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _, sockaddr in infos:
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(self.sockets) > 1:
                    sockaddr = (sockaddr[0], self.port, *sockaddr[2:])
                sock.bind(sockaddr)
                sock.listen(backlog)
                sock.setblocking(False)
            for sock in self.sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            self.close()
            raise
        return self.port

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening and end the connections still in their TLS handshake: nothing of
        theirs runs yet, so the server's stop neither waits for them (its grace is for
        requests) nor leaves them open until their deadline."""
        self._closed = True
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the handshakes :meth:`close` ended have let their places go."""
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def _accept(self, sock: socket.socket) -> None:
        # ``socket.accept`` turns the listening socket's family and type into enums for each
        # connection it wraps (5 % of the server's CPU in an all-at-once storm, round 9):
        # read them once per readiness event and wrap the descriptor here.
        family, kind, proto = sock.family, sock.type, sock.proto
        accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors or buffers: back off instead of spinning on the reader.
                log.warning("cannot accept connections: %s", exc)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume, sock)
                return
            self._admit(socket.socket(family, kind, proto, fd), address)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, conn: socket.socket, address: object) -> None:
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        addr = address_key(host)
        conn.setblocking(False)
        if not self.registry.addresses.admit(addr, self.max_per_addr):
            self.refused += 1
            if self.tls is None:
                with contextlib.suppress(OSError):
                    conn.send(self._refusal)
            conn.close()
            return
        if self.send_buffer:
            # The kernel would grow a non-reader's send buffer up to tcp_wmem's maximum (4 MiB
            # by default) on top of what the server itself holds for it.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        if self.tls is None:
            self._open(conn, addr)
        else:
            task = self._loop.create_task(self._serve(conn, addr))
            self._handshakes.add(task)
            task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("TLS handshake task failed", exc_info=task.exception())

    def _open(self, conn: socket.socket, addr: str) -> None:
        """Plain TCP: the transport is made here, in the accept callback.

        ``connect_accepted_socket`` makes it in its first step and then only waits for
        ``connection_made``; stepping it here, and once more when that is done, spares a
        task per connection (made, stepped twice, its done callback run: a tenth of the
        accept path in a connect storm).
        """
        protocol = self.factory()
        opening = self._loop.connect_accepted_socket(lambda: protocol, conn)
        self._step(opening, conn, addr, protocol, None)

    def _step(
        self,
        opening: Coroutine[Any, Any, object],
        conn: socket.socket,
        addr: str,
        protocol: asyncio.BaseProtocol,
        _done: object,
    ) -> None:
        try:
            waiting = opening.send(None)
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError) as exc:
            conn.close()
            if getattr(protocol, "transport", None) is None:
                self.registry.addresses.release(addr)  # never became a session: the count is ours
            log.info("connection from %s ended before it began: %s", addr, exc)
            return
        step = functools.partial(self._step, opening, conn, addr, protocol)
        if isinstance(waiting, asyncio.Future):
            waiting.add_done_callback(step)
        else:
            self._loop.call_soon(step, None)  # a bare yield: step again next turn

    async def _serve(self, conn: socket.socket, addr: str) -> None:
        """TLS: the first byte decides (see :mod:`.plaintext`), then the handshake, both
        within one deadline."""
        loop = self._loop
        deadline = loop.time() + self.handshake_timeout
        protocol: asyncio.BaseProtocol | None = None
        try:
            first = await plaintext.peek_first_byte(loop, conn, deadline)
            if first is None or not plaintext.starts_tls(first):
                if first is not None:
                    log.info("plain connection to the TLS port from %s: refused", addr)
                    await plaintext.refuse(loop, conn, self.plaintext_reply(first), deadline)
                conn.close()
                self.registry.addresses.release(addr)
                return
            protocol = self.factory()
            await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self.tls,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            conn.close()
            if getattr(protocol, "transport", None) is None:
                self.registry.addresses.release(addr)  # never became a session: the count is ours
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.info("connection from %s ended before it began: %s", addr, exc)
