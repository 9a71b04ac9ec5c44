"""What request handlers work with: the server's parts, and the two ways they answer.

One :class:`Context` per server, built by the hub and passed to every handler, so handlers
are plain functions that depend on these parts and on :class:`Peer`, never on the hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imchat.protocol import ErrorCode, Limits, ProtocolError, Request, encode_message
from imchat.protocol.events import Ok, Pong, Welcome

from .addrlimits import AddressLimits
from .authn import Authenticator
from .budgets import Buckets
from .config import ServerConfig
from .dm_delivery import DmDelivery
from .fanout import Fanout, LocalFanout
from .message_features import TypingThrottle
from .peer import Peer, User
from .registry import Registry
from .room_budget import RoomBudget
from .store import Draft, Store


def now() -> float:
    """An event's ``ts``: Unix seconds rounded to milliseconds."""
    return round(time.time(), 3)


@dataclass(slots=True)
class Context:
    config: ServerConfig
    store: Store
    fanout: Fanout
    registry: Registry
    authn: Authenticator
    dms: DmDelivery
    limits: Limits
    #: Budgets of each client address across its sessions (and a cluster's nodes).
    addr_limits: AddressLimits
    #: Who may create a room by joining a new name (guests spend budgets; a cap).
    room_budget: RoomBudget
    #: Token buckets of what strangers begin (new guest identities per address).
    buckets: Buckets
    #: Revision 3: which ``typing`` notifications were forwarded lately.
    typing: TypingThrottle = field(default_factory=TypingThrottle)
    #: The store's ``queue_append`` (a run's room messages with one future; SQLite: as one
    #: operation, Redis: each its command on the ordered pipeline), or
    #: None; read once, not with a ``getattr`` and a bound method per message.
    queue_append: Callable[[Draft, object], tuple[asyncio.Future[Any], int]] | None = field(
        init=False, default=None
    )
    #: Whether the fan-out's ``hold`` can tag anything (a clustered one); :class:`LocalFanout`'s
    #: is always None, so a message does not ask it.
    holds: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.queue_append = getattr(self.store, "queue_append", None)
        self.holds = type(self.fanout).hold is not LocalFanout.hold

    @staticmethod
    def reply(session: Peer, request: Request, reply: Ok | Welcome | Pong) -> None:
        """Send a reply carrying the request's id, if it had one."""
        reply.id = request.id
        session.send(encode_message(reply))

    @staticmethod
    def user(session: Peer) -> User:
        """The session's user (handlers that need one run only after ``hello``)."""
        assert session.user is not None  # guaranteed by the hello_required check
        return session.user

    def member(self, session: Peer, room: str) -> User:
        """The session's user, if it is a member of ``room`` (else ``not_in_room``)."""
        user = session.user  # self.user(session), inline: a call less per message
        assert user is not None  # guaranteed by the hello_required check
        # A detached (HTTP) poster posts without joining; its caller checked the room exists.
        if not user.detached and not self.fanout.is_member(user, room):
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room}")
        return user
