"""The IRC listening sockets (plain and TLS), opened beside the native one."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from ..listener import Listener
from ..plaintext import irc_reply
from .session import AdmittedIrcSession, IrcSession, IrcShared

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger(__name__)


async def start_irc_listeners(
    hub: Hub,
    host: str,
    port: int | None,
    tls_port: int | None,
    tls: ssl.SSLContext | None,
) -> list[asyncio.AbstractServer | Listener]:
    """Listen for IRC on ``port`` (plain) and ``tls_port`` (TLS with ``tls``); None: off.

    The TLS port is a :class:`Listener`, as the native port is: ``create_server(ssl=...)``
    would make the session (which counts its address) only once the handshake is done, so
    one address could hold any number of unfinished handshakes, and the server's stop would
    leave them open until their deadline.
    """
    shared = IrcShared()
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer | Listener] = []
    try:
        if port is not None:
            server = await loop.create_server(
                lambda: IrcSession(hub, shared),
                host,
                port,
                reuse_address=True,
                reuse_port=hub.config.reuse_port or None,
            )
            servers.append(server)
            log.info("serving IRC at %s:%d", host, server.sockets[0].getsockname()[1])
        if tls_port is not None:
            if tls is None:
                raise ValueError("the IRC TLS port needs --tls-cert and --tls-key")
            config = hub.config
            listener = Listener(
                hub.registry,
                lambda: AdmittedIrcSession(hub, shared),
                max_per_addr=config.max_connections_per_ip,
                tls=tls,
                handshake_timeout=config.hello_timeout,
                send_buffer=config.socket_send_buffer,
                plaintext_reply=irc_reply,
            )
            servers.append(listener)
            bound = await listener.start(
                host, tls_port, config.listen_backlog, reuse_port=config.reuse_port
            )
            log.info("serving IRC at %s:%d (TLS)", host, bound)
    except BaseException:
        for opened in servers:
            opened.close()
        raise
    return servers
