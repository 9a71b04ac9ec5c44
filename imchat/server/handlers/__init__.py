"""Every request's handler, by request type: the table the hub dispatches on.

A handler is a plain function of the server :class:`~imchat.server.context.Context`, the
requesting :class:`~imchat.server.peer.Peer` and the parsed request. It checks only state
(membership, presence, permissions; ``parse_request`` validated the fields) and sends its
reply before publishing the events it causes. Message requests (``APPENDERS``) start their
commit and return an :class:`~imchat.server.appends.Append` instead of awaiting it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from imchat.protocol import (
    Announce,
    Bye,
    Dm,
    Hello,
    History,
    Join,
    Part,
    Ping,
    Request,
    Rooms,
    Say,
    Topic,
    Users,
)

from ..appends import Append
from ..context import Context
from ..peer import Peer
from .messages import start_announce, start_dm, start_say
from .queries import on_history, on_users
from .rooms import on_join, on_part, on_rooms, on_topic
from .session import leave, on_bye, on_hello, on_ping

Handler = Callable[[Context, Peer, Any], Awaitable[None]]
Starter = Callable[[Context, Peer, Any], Append]

HANDLERS: dict[type[Request], Handler] = {
    Hello: on_hello,
    Ping: on_ping,
    Bye: on_bye,
    Join: on_join,
    Part: on_part,
    Topic: on_topic,
    Rooms: on_rooms,
    Users: on_users,
    History: on_history,
}

APPENDERS: dict[type[Request], Starter] = {
    Say: start_say,
    Dm: start_dm,
    Announce: start_announce,
}

#: Requests that spend the session's message rate limit (joins too, *rev 2*: each may create
#: a permanent room).
RATE_LIMITED_TYPES: tuple[type[Request], ...] = (Say, Dm, Announce, Topic, Join)

__all__ = ["APPENDERS", "HANDLERS", "RATE_LIMITED_TYPES", "Handler", "Starter", "leave"]
