"""HTTP connections counted per address (IPv6: per /64) from the moment they are accepted.

``loop.create_server(ssl=...)`` tells its protocol of a connection only once the TLS handshake
is done, so a count kept there let one address hold any number of unfinished handshakes (each a
descriptor and TLS state until the deadline). The HTTPS listener is therefore a plain one whose
first protocol, :class:`TlsAdmission`'s, counts the address in ``connection_made`` (closing a
connection over the limit at once) and, in the same call, gives the transport to the SSL
protocol the running loop's own ``create_server(ssl=...)`` would use, with the handshake
deadline. Both loops begin reading a transport only after its ``connection_made`` returns
(asyncio schedules the reader after that call, uvloop starts reading after it), so TLS owns
the stream from its first byte. The transport reports the connection's end to the SSL protocol
once, handshake done or not: that frees the place.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import functools
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

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

    def __call__(self) -> asyncio.BaseProtocol:
        return _Admit(self)


class _Admit(asyncio.Protocol):
    """A connection's protocol for its ``connection_made`` only (and its ``connection_lost``
    if it was refused there)."""

    def __init__(self, admission: TlsAdmission) -> None:
        self.admission = admission

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self.admission
        raw = cast(asyncio.Transport, transport)
        addr = peer_key(raw)
        if not admission.counts.admit(addr, admission.limit):
            raw.abort()
            return
        loop = asyncio.get_running_loop()
        try:
            tls = releasing_ssl_protocol(loop)(
                loop,
                admission.app(),
                admission.context,
                None,  # no waiter: a failed handshake closes the transport itself
                server_side=True,
                ssl_handshake_timeout=admission.handshake_timeout,
            )
        except BaseException:
            admission.counts.release(addr)
            raw.abort()
            raise
        tls.release = functools.partial(admission.counts.release, addr)
        raw.set_protocol(tls)
        tls.connection_made(raw)


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
