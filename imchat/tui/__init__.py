"""The imchat terminal client (Textual). ``imchat join`` calls :func:`run_tui`.

Textual is imported lazily so that importing :mod:`imchat.tui` stays cheap for the CLI.
"""

from __future__ import annotations

import ssl as ssl_module
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imchat.tui.config import TuiConfig

__all__ = ["run_tui"]


def run_tui(
    host: str,
    port: int,
    nick: str,
    room: str | None,
    password: str | None = None,
    token: str | None = None,
    tls: ssl_module.SSLContext | bool | None = None,
    config: TuiConfig | None = None,
) -> int:
    """Run the chat UI until the user quits; returns a process exit code.

    ``host`` may list several nodes of one service (``a:7667,b:7667``, see
    :mod:`imchat.client.servers`); ``port`` is the default for those without one. ``tls`` may
    be an ``SSLContext``, ``True`` for the system's default verification, or None/False for
    plain TCP. ``room`` is joined on connect (None joins nothing). Exits 1 when the server
    refused us for good (``auth_failed``, ``bad_nick``, a nick in use).
    """
    from imchat.client.servers import parse_servers
    from imchat.client.session import ChatSession
    from imchat.tui.app import ChatApp
    from imchat.tui.paste_parser import install as install_paste_parser

    context: ssl_module.SSLContext | None
    if tls is True:
        context = ssl_module.create_default_context()
    elif isinstance(tls, ssl_module.SSLContext):
        context = tls
    else:
        context = None
    servers = parse_servers(host, port)
    session = ChatSession(
        nick,
        password=password,
        token=token,
        ssl=context,
        rooms=[room] if room else [],
        servers=servers,
    )
    app = ChatApp(session, server_label=",".join(map(str, servers)), config=config)
    install_paste_parser()  # a pasted ESC must not turn the rest of the paste into keys
    app.run()
    restore = app.notifier.restore_title()
    if restore and sys.__stderr__ is not None:  # Textual's driver writes to stderr too
        sys.__stderr__.write(restore)
        sys.__stderr__.flush()
    return 1 if app.failed else 0
