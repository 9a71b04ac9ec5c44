"""The IRC listening sockets (plain and TLS), opened beside the native one."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from .session import IrcSession, IrcShared

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger(__name__)


async def start_irc_listeners(
    hub: Hub,
    host: str,
    port: int | None,
    tls_port: int | None,
    tls: ssl.SSLContext | None,
) -> list[asyncio.Server]:
    """Listen for IRC on ``port`` (plain) and ``tls_port`` (TLS with ``tls``); None: off."""
    shared = IrcShared()
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for number, secure in ((port, False), (tls_port, True)):
            if number is None:
                continue
            if secure and tls is None:
                raise ValueError("the IRC TLS port needs --tls-cert and --tls-key")
            context = tls if secure else None
            server = await loop.create_server(
                lambda: IrcSession(hub, shared),
                host,
                number,
                reuse_address=True,
                reuse_port=hub.config.reuse_port or None,
                ssl=context,
                ssl_handshake_timeout=(hub.config.hello_timeout or None) if context else None,
            )
            servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            log.info("serving IRC at %s:%d%s", host, bound, " (TLS)" if context else "")
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
