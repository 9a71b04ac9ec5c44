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
    Delete,
    Dm,
    Edit,
    Hello,
    History,
    Join,
    Mark,
    Markers,
    Part,
    Ping,
    React,
    Request,
    Rooms,
    Say,
    Search,
    Topic,
    Typing,
    Users,
)

from ..appends import Append
from ..context import Context
from ..peer import Peer
from .features import (
    on_mark,
    on_markers,
    on_search,
    on_typing,
    start_delete,
    start_edit,
    start_react,
)
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
    # revision 3
    Mark: on_mark,
    Markers: on_markers,
    Typing: on_typing,
    Search: on_search,
}

APPENDERS: dict[type[Request], Starter] = {
    Say: start_say,
    Dm: start_dm,
    Announce: start_announce,
    # revision 3: messages of their own
    Edit: start_edit,
    Delete: start_delete,
    React: start_react,
}

#: Requests that spend the session's message rate limit: joins too (*rev 2*: each may create
#: a permanent room); revision 3's edits, deletes and reactions are messages, and a search is
#: work on the store; so is ``rooms``, which reads every room (up to ``guest_room_cap`` of
#: them guests made). ``typing`` is not counted (the contract says so).
RATE_LIMITED_TYPES: tuple[type[Request], ...] = (
    *(Say, Dm, Announce, Topic, Join, Rooms),
    *(Edit, Delete, React, Search),
)

#: Requests that spend the session's read budget (``read_rate`` after ``read_burst``): each
#: is a store (or cluster) read, ``mark`` a store write per forward move. A budget of their
#: own, not the message one: a client sends a ``history`` per conversation, the ``markers``
#: and the ``users`` at every (re)connect, and its messages must not wait for that.
READ_LIMITED_TYPES: tuple[type[Request], ...] = (History, Users, Markers, Mark)

__all__ = [
    "APPENDERS",
    "HANDLERS",
    "RATE_LIMITED_TYPES",
    "READ_LIMITED_TYPES",
    "Handler",
    "Starter",
    "leave",
]
