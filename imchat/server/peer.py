"""A client connection (:class:`Peer`) and the online user it belongs to (:class:`User`).

``Peer`` is what the hub, its handlers and the fan-outs need of a connection.

:class:`imchat.server.session.Session` (the native TCP protocol) is one; the IRC and HTTP
adapters provide their own. Depending on this protocol instead of on ``Session`` keeps the
server core free of import cycles and of any one transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from imchat.protocol import ProtocolError

if TYPE_CHECKING:
    from .ratelimit import TokenBucket

#: How a session logged in: ("token", token hash) or ("password", password hash).
Credential = tuple[str, str]


class Peer(Protocol):
    """One connection of a client, whatever its transport."""

    #: The authenticated user, None before ``hello``.
    user: User | None
    #: The unit of per-address limits: the client's IPv4 address or IPv6 /64.
    addr: str

    @property
    def peer(self) -> str:
        """The remote end, for logs ("host:port")."""
        ...

    #: Set once the connection is being closed: nothing more is sent or handled.
    closing: bool
    #: How it logged in, re-checked while it lasts (see :mod:`imchat.server.authn`).
    credential: Credential | None

    @property
    def bucket(self) -> TokenBucket:
        """Its message rate limit."""
        ...

    @property
    def read_bucket(self) -> TokenBucket:
        """Its limit of reads and read-marker moves (``READ_LIMITED_TYPES``)."""
        ...

    #: Loop time of its start and of the last bytes it sent (for the idle sweep; ``opened``
    #: only matters while ``user`` is None: a native session lets it go once logged in).
    opened: float
    last_rx: float
    #: Seconds its guest identity stays held after its last session ends (rev 2); None: the
    #: server's ``--guest-hold``. A transport whose clients cannot send ``resume`` (IRC)
    #: holds nothing: there is no secret to come back with.
    guest_hold: float | None

    @property
    def nick(self) -> str:
        """The user's nick, or ``-`` before ``hello`` (for logs)."""
        ...

    def send(self, frame: bytes) -> None:
        """Queue one encoded frame; it leaves at the next flush."""

    def send_error(self, error: ProtocolError) -> None:
        """Send an error reply, or fail the connection if the error is fatal."""

    def fail(self, error: ProtocolError) -> None:
        """Send a fatal error as the last frame and close."""

    def close(self) -> None:
        """Flush what is owed and close."""

    def flush(self) -> None:
        """Write the frames queued since the last flush (called by the registry)."""

    def pause_reading(self) -> None:
        """Stop taking requests (at shutdown, so the last ones can be answered)."""

    def abort(self) -> None:
        """Drop the connection at once, unflushed."""

    def wait_written(self) -> Awaitable[bool]:
        """True once what was queued so far has been written to the connection (its buffer
        below the high-water mark); False if it closes first (rev 2: a queued DM leaves its
        queue only once written)."""


def budget_key(session: Peer, user: User) -> str:
    """The sender a share of something is counted for: one a stranger cannot multiply.

    An account (``"u:<identity id>"``) wherever it logs in from, since accounts are made by an
    admin; a guest by its address (``"a:<IPv4 address or IPv6 /64>"``), since guest nicks
    cost nothing (an address may begin ``--addr-guests-*`` of them, 300 a minute), so a share
    per nick or guest identity is multiplied by them. An HTTP caller (``detached``) is an
    account. The two forms never equal each other, nor a stream key (``r:``, ``d:``, ``a``).
    """
    if session.credential is not None or user.detached:
        return "u:" + user.ident
    return "a:" + session.addr


class RoomSet:
    """The rooms a user is in: a set of names that holds a single room without a ``set``.

    Most users are in one room, and an empty or one-element ``set`` costs 216 bytes per
    online user (idle memory); this holds None, the one name, or a ``set`` for several.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: str | set[str] | None = None

    def __contains__(self, room: object) -> bool:
        items = self._items
        if items is None or isinstance(items, str):
            return items == room
        return room in items

    def __len__(self) -> int:
        items = self._items
        if items is None:
            return 0
        return 1 if isinstance(items, str) else len(items)

    def __iter__(self) -> Iterator[str]:
        items = self._items
        if items is None:
            return iter(())
        return iter((items,)) if isinstance(items, str) else iter(list(items))

    def add(self, room: str) -> None:
        items = self._items
        if items is None:
            self._items = room
        elif isinstance(items, str):
            if items != room:
                self._items = {items, room}
        else:
            items.add(room)

    def discard(self, room: str) -> None:
        items = self._items
        if items is None or isinstance(items, str):
            if items == room:
                self._items = None
            return
        items.discard(room)
        if len(items) == 1:
            self._items = next(iter(items))

    def update(self, rooms: Iterable[str]) -> None:
        for room in rooms:
            self.add(room)

    def clear(self) -> None:
        self._items = None


class User:
    """An online user: the sessions it has here and the rooms it is in."""

    __slots__ = (
        "admin",
        "detached",
        "ident",
        "key",
        "nick",
        "rooms",
        "sessions",
    )

    def __init__(self, nick: str, admin: bool, ident: str = "") -> None:
        self.nick = nick
        key = nick.lower()
        #: Shares the nick's string when it is lower case already (idle memory per user).
        self.key = nick if key == nick else key
        self.admin = admin
        #: An HTTP caller (``imchat.server.http``) posting as its account: never online, in
        #: no room, never a recipient; it may post to a room it is not a member of.
        self.detached = False
        #: The account or guest identity (rev 2): its cids, DM queue and DM view. Sessions
        #: of another identity never join this user. Empty: the nick key (tests, adapters).
        self.ident = ident or self.key
        self.sessions: list[Peer] = []
        self.rooms = RoomSet()
