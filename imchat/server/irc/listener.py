"""The IRC listening sockets (plain and TLS), opened beside the native one."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from ..listener import Listener
from ..plaintext import irc_reply
from .session import AdmittedIrcSession, IrcShared

if TYPE_CHECKING:
    from ..hub import Hub

log = logging.getLogger(__name__)


async def start_irc_listeners(
    hub: Hub,
    host: str,
    port: int | None,
    tls_port: int | None,
    tls: ssl.SSLContext | None,
) -> list[Listener]:
    """Listen for IRC on ``port`` (plain) and ``tls_port`` (TLS with ``tls``); None: off.

    Both are a :class:`Listener`, as the native port is: the address is counted when a
    connection is accepted, and the socket options (``--socket-send-buffer``) are the same.
    With TLS, ``create_server(ssl=...)`` would also make the session (which counts its
    address) only once the handshake is done, so one address could hold any number of
    unfinished handshakes, and the server's stop would leave them open until their deadline.
    """
    if tls_port is not None and tls is None:
        raise ValueError("the IRC TLS port needs --tls-cert and --tls-key")
    shared = IrcShared()
    config = hub.config
    servers: list[Listener] = []
    try:
        for at, context in ((port, None), (tls_port, tls)):
            if at is None:
                continue
            listener = Listener(
                hub.registry,
                lambda: AdmittedIrcSession(hub, shared),
                max_per_addr=config.max_connections_per_ip,
                tls=context,
                handshake_timeout=config.hello_timeout,
                send_buffer=config.socket_send_buffer,
                plaintext_reply=irc_reply,
            )
            servers.append(listener)
            bound = await listener.start(
                host, at, config.listen_backlog, reuse_port=config.reuse_port
            )
            log.info("serving IRC at %s:%d%s", host, bound, " (TLS)" if context else "")
    except BaseException:
        for opened in servers:
            opened.close()
        raise
    return servers
