"""HTTP connections counted per address (IPv6: per /64) from the moment they are accepted.

``loop.create_server(ssl=...)`` tells its protocol of a connection only once the TLS handshake
is done, so a count kept there let one address hold any number of unfinished handshakes (each a
descriptor and TLS state until the deadline). The HTTPS listener is therefore a plain one whose
first protocol, :class:`TlsAdmission`'s, counts the address in ``connection_made`` (closing a
connection over the limit at once) and starts the handshake deadline. Its first bytes decide
(:mod:`imchat.server.plaintext`): plain HTTP is answered 400 and closed; TLS gets the
transport, those bytes fed to it as its transport would have, in the SSL protocol the running
loop's own ``create_server(ssl=...)`` would use, with what is left of the deadline. The
transport reports the connection's end to whichever protocol has it by then, once, handshake
done or not: that frees the place.

The admission also keeps every connection it admitted until that end, because a connection
still in its handshake belongs to no HTTP handler: aiohttp's cleanup at shutdown never sees it,
and neither loop's ``Server.close()`` (Python 3.11, uvloop) closes accepted connections. The
frontend aborts those first (:meth:`TlsAdmission.abort_handshakes`), lets aiohttp close the
established ones, then aborts what is left and waits for their ends (:meth:`TlsAdmission.close`),
so a stalled handshake neither outlives the server until its deadline nor keeps its place.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import functools
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

from imchat.server import plaintext
from imchat.server.addrcounts import AddressCounts
from imchat.server.ratelimit import address_key


def peer_key(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return address_key(str(peer[0])) if isinstance(peer, tuple) else "?"


class TlsAdmission:
    """The protocol factory of the HTTPS listener (``loop.create_server`` without ``ssl``):
    counts each connection at accept, then runs TLS on it for ``app()``'s protocol."""

    def __init__(
        self,
        counts: AddressCounts,
        limit: int,
        app: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self.counts = counts
        self.limit = limit
        self.app = app
        self.context = context
        self.handshake_timeout = handshake_timeout
        #: Each admitted connection's raw transport and its HTTP protocol, until it ends.
        self.open: dict[asyncio.Transport, asyncio.BaseProtocol] = {}
        self._emptied: asyncio.Event | None = None

    def ended(self, raw: asyncio.Transport, addr: str) -> None:
        """The connection's end, reported once by its SSL protocol: frees its place."""
        self.counts.release(addr)
        self.open.pop(raw, None)
        if not self.open and self._emptied is not None:
            self._emptied.set()

    def abort_handshakes(self) -> None:
        """Abort the connections whose handshake is not done: their HTTP protocol was never
        given a transport (aiohttp's ``RequestHandler.transport`` is set in its
        ``connection_made``, which TLS calls once the handshake is done)."""
        for raw, app in list(self.open.items()):
            if getattr(app, "transport", None) is None:
                raw.abort()

    async def close(self, timeout: float) -> None:
        """Abort every connection still open and wait (at most ``timeout`` seconds) until
        each one's end was reported, so their places are free when this returns."""
        if not self.open:
            return
        self._emptied = asyncio.Event()
        for raw in list(self.open):
            raw.abort()
        try:
            async with asyncio.timeout(timeout):
                await self._emptied.wait()
        except TimeoutError:
            pass

    def __call__(self) -> asyncio.BaseProtocol:
        return _Admit(self)


class _Admit(asyncio.Protocol):
    """A connection's protocol until its first bytes: counts it at accept, then hands it to
    TLS, or, if those bytes are not TLS (plain HTTP sent to the HTTPS port), to a
    :class:`~imchat.server.plaintext.Refusal` that answers 400 (see :mod:`.plaintext`). The
    wait for those bytes is part of the handshake, under its deadline."""

    def __init__(self, admission: TlsAdmission) -> None:
        self.admission = admission
        self.raw: asyncio.Transport | None = None
        self.addr = "?"
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self.admission
        raw = cast(asyncio.Transport, transport)
        addr = peer_key(raw)
        if not admission.counts.admit(addr, admission.limit):
            raw.abort()
            return
        self.raw, self.addr = raw, addr
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + admission.handshake_timeout
        self._timer = loop.call_at(self.deadline, raw.abort)
        admission.open[raw] = self  # no ``transport``: aborted at shutdown as a handshake

    def data_received(self, data: bytes) -> None:
        admission, raw = self.admission, self.raw
        if raw is None or not data:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        ended = functools.partial(admission.ended, raw, self.addr)
        if not plaintext.starts_tls(data[0]):
            self.raw = None  # the refusal reports the end
            refusal = plaintext.Refusal(plaintext.http_reply(data[0]), self.deadline, ended)
            raw.set_protocol(refusal)
            refusal.connection_made(raw)
            return
        try:
            app = admission.app()
            tls = releasing_ssl_protocol(loop)(
                loop,
                app,
                admission.context,
                None,  # no waiter: a failed handshake closes the transport itself
                server_side=True,
                ssl_handshake_timeout=max(self.deadline - loop.time(), 0.001),
            )
        except BaseException:
            raw.abort()
            raise
        self.raw = None  # the SSL protocol reports the end from now on
        admission.open[raw] = app
        tls.release = ended
        raw.set_protocol(tls)
        tls.connection_made(raw)
        feed(tls, data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.raw is not None:  # ended before its first bytes decided anything
            raw, self.raw = self.raw, None
            self.admission.ended(raw, self.addr)


def feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Give ``protocol`` bytes already read, as its transport would have."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


@functools.cache
def _releasing(base: type[Any]) -> type[Any]:
    """``base`` (an SSL protocol class) whose instances call their ``release`` once, when
    the transport reports the connection's end."""

    class Releasing(base):  # type: ignore[misc]
        release: Callable[[], None] | None = None

        def connection_lost(self, exc: BaseException | None) -> None:
            release, self.release = self.release, None
            try:
                super().connection_lost(exc)
            finally:
                if release is not None:
                    release()

    Releasing.__qualname__ = Releasing.__name__ = f"Releasing{base.__name__}"
    return Releasing


def releasing_ssl_protocol(loop: asyncio.AbstractEventLoop) -> type[Any]:
    """The SSL protocol ``loop.create_server(ssl=...)`` uses (uvloop has its own, which its
    transports feed directly), with a ``release`` called when the connection ends."""
    for cls in type(loop).__mro__:
        if cls.__module__ == "uvloop.loop":
            return _releasing(sys.modules[cls.__module__].SSLProtocol)
    return _releasing(asyncio.sslproto.SSLProtocol)
