"""Who receives an event: presence, room membership and delivery to sessions.

The handlers ask a :class:`Fanout` who is online and who is in a room, and hands it encoded
frames to deliver. :class:`LocalFanout` keeps all of that in this process; a clustered
implementation keeps the shared part in Redis and delivers to its own sessions the same way.
Delivery methods take bytes that were encoded once and only append them to each recipient's
buffer: nothing here awaits a client, and a session that fails while being written to leaves
the user and room tables untouched until its ``connection_lost`` (so iterating them is safe).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from itertools import chain, groupby
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

from .identities import evict
from .peer import User
from .stats import STATS

if TYPE_CHECKING:
    from .peer import Peer
    from .registry import Registry

__all__ = ["Fanout", "LocalFanout", "User", "send_run"]


def send_run(sessions: Iterable[Peer], frames: list[bytes], joined: bytes) -> None:
    """Several frames (``joined``: the same bytes, concatenated) to each session, in order:
    one append each where the session can take them at once."""
    joins = 0  # sessions that queued ``joined`` as one entry (see Session.send_frames)
    for session in sessions:
        send_frames = getattr(session, "send_frames", None)
        if send_frames is not None:
            if send_frames(frames, joined):  # True: one entry (a fake or older one: None)
                joins += 1
        else:
            for frame in frames:
                session.send(frame)
    if joins:
        STATS.deliveries += joins * (len(frames) - 1)  # their flushes count one each


class Fanout(Protocol):
    #: Whether :meth:`connect` reads the identity's undelivered DMs itself and sends them at
    #: :meth:`release` (a clustered fanout, atomically with the session's arrival); else the
    #: hub sends them (:class:`imchat.server.dm_delivery.DmDelivery`).
    sends_undelivered: bool
    #: False while a clustered fanout has lost its store (Redis) and not yet started over:
    #: its sessions were closed with ``shutting_down``, and a ``hello`` is refused the same
    #: way rather than failing as ``internal`` on its first store read.
    available: bool

    async def open(self, registry: Registry) -> None:
        """Start background work (a clustered fanout subscribes and heartbeats here)."""

    async def close(self) -> None:
        """Stop it, after every session has left."""

    async def connect(self, session: Peer, nick: str, *, admin: bool, ident: str) -> bool:
        """Attach an authenticated session to its user; True if the hub must announce
        ``online`` (the user just came online).

        ``ident`` is the account or guest identity the hello established (the store decided
        who may have the nick). A user of another identity online under the nick is a guest
        an account just outranked: it is ended (:func:`imchat.server.identities.evict`), never
        shared. A clustered fanout publishes ``online`` itself, atomically with the change (so
        it can't overtake an ``offline`` from another node), and returns False.
        """

    async def disconnect(self, session: Peer) -> list[str] | None:
        """Detach a session. If it was the user's last, the rooms it left; else None.

        The hub sends ``parted`` (quit) to those rooms and ``offline``; a clustered fanout
        publishes them itself and returns None.
        """

    async def join(self, session: Peer, room: str) -> bool:
        """Make the session's user a member; True if the hub must send ``joined``.

        False if it already was a member, or if a clustered fanout published ``joined``
        itself (atomically with the change, so every node applies memberships in one order).
        Takes the session, not the user, so a clustered fanout knows whose reply the events
        after this change must wait for (see :meth:`hold`).
        """

    async def part(self, session: Peer, room: str) -> bool:
        """End the user's membership; True if the hub must send ``parted`` (as for join)."""

    def is_member(self, user: User, room: str) -> bool: ...

    async def members(self, room: str) -> list[str]: ...

    async def member_counts(self, rooms: Sequence[str] | None = None) -> dict[str, int]:
        """Members per room with any (of ``rooms``; None: of every room)."""
        ...

    async def online(self) -> list[str]: ...

    def user(self, key: str) -> User | None:
        """The online user with this nick key on this node, if any."""

    def session_count(self) -> int:
        """Sessions an announcement would be written to (on this node)."""

    def hold(self, session: Peer) -> str | None:
        """A tag for what the session's current requests publish, or None (no cluster).

        A clustered fanout delivers nothing published under a held tag (nor anything
        published after it) to this node's sessions until :meth:`release`: that keeps "a
        reply is sent before any event its request caused" when events come back over
        pub/sub faster than the reply.
        """

    def release(self, session: Peer) -> None:
        """Every request of the session that took a hold has queued its reply: the events
        they caused may go out now (the hub calls this after each handler and each run of
        pipelined appends)."""

    async def caught_up(self, timeout: float | None = None) -> bool:
        """Return once every event published before the call has been handed to this
        server's sessions, or False after ``timeout`` (``bye`` and ``ping``: the events of a
        session's own requests come first, which a clustered fanout reads back from Redis)."""

    def to_room(self, room: str, frame: bytes) -> None: ...

    def to_users(self, keys: Iterable[str], frame: bytes) -> None: ...

    def to_everyone(self, frame: bytes) -> None: ...


_SESSIONS = attrgetter("sessions")

#: A room's recipients: its member sessions in runs of one class.
Recipients = tuple[tuple[type, tuple["Peer", ...]], ...]


def runs_by_class(users: Iterable[User]) -> Recipients:
    """Every session of ``users`` in runs of one class (each run is written in one go by
    :func:`send_to_runs`), chained without a Python loop."""
    sessions = chain.from_iterable(map(_SESSIONS, users))
    return tuple((cls, tuple(run)) for cls, run in groupby(sessions, type))


def send_to_runs(recipients: Recipients, frame: bytes) -> None:
    """One frame to every session: one call per run whose class sends to many at once
    (``send_all``), else one per session."""
    for cls, sessions in recipients:
        send_all = getattr(cls, "send_all", None)
        if send_all is not None:
            send_all(sessions, frame)
        else:
            for session in sessions:
                session.send(frame)


def send_run_to_runs(recipients: Recipients, frames: list[bytes], joined: bytes) -> None:
    """Several frames (``joined``: the same bytes, concatenated), in order, to every session:
    one append per session, and one call per run whose class has ``send_run_all``."""
    joins = 0  # sessions that queued ``joined`` as one entry (see Session.send_frames)
    for cls, sessions in recipients:
        send_run_all = getattr(cls, "send_run_all", None)
        if send_run_all is not None:
            joins += send_run_all(sessions, frames, joined)
        else:
            send_run(sessions, frames, joined)
    if joins:
        STATS.deliveries += joins * (len(frames) - 1)  # their flushes count one each


class LocalFanout:
    """:class:`Fanout` for a single server process."""

    sends_undelivered = False
    available = True

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._rooms: dict[str, dict[str, User]] = {}
        #: Each room's member sessions, in runs of one class (nearly always one run), made at
        #: its first delivery after a change of its members or of their sessions (then
        #: dropped): a room's event is a call per run where the class sends to many at once
        #: (``send_all``, ``send_run_all``: the native session), not a loop per member (an
        #: iterator each) and a call per session.
        self._recipients: dict[str, Recipients] = {}
        self._sessions = 0

    async def open(self, registry: Registry) -> None:
        pass

    async def close(self) -> None:
        pass

    async def connect(self, session: Peer, nick: str, *, admin: bool, ident: str) -> bool:
        key = nick.lower()
        user = self._users.get(key)
        if user is not None and user.ident != ident:
            self._drop(user)
            evict(user)
            user = None
        first = user is None
        if user is None:
            user = User(nick, admin, ident)
            self._users[user.key] = user  # its key: no second string per user
            # A list of exactly one (append would make room for four: idle memory).
            user.sessions = [session]
        else:
            user.sessions.append(session)
            self._changed(user.rooms)
        session.user = user
        self._sessions += 1
        return first

    async def disconnect(self, session: Peer) -> list[str] | None:
        user = session.user
        if user is None or session not in user.sessions:
            return None
        user.sessions.remove(session)
        self._sessions -= 1
        self._changed(user.rooms)
        if user.sessions or self._users.get(user.key) is not user:
            return None  # not its last session, or an evicted identity (already dropped)
        return self._drop(user)

    def _drop(self, user: User) -> list[str]:
        """Forget an online user and its memberships; the rooms it was in."""
        del self._users[user.key]
        rooms = sorted(user.rooms)
        for room in rooms:
            self._rooms[room].pop(user.key, None)
        self._changed(rooms)
        user.rooms.clear()
        return rooms

    def _changed(self, rooms: Iterable[str]) -> None:
        """These rooms' members or their sessions changed: their recipients are made anew."""
        recipients = self._recipients
        for room in rooms:
            recipients.pop(room, None)

    def _room_sessions(self, room: str) -> Recipients:
        """The room's member sessions (see ``_recipients``)."""
        recipients = self._recipients.get(room)
        if recipients is None:
            members = self._rooms.get(room)
            if not members:
                return ()
            recipients = self._recipients[room] = runs_by_class(members.values())
        return recipients

    async def join(self, session: Peer, room: str) -> bool:
        user = session.user
        assert user is not None
        if room in user.rooms:
            return False
        room = sys.intern(room)  # one string for the room in every member's RoomSet
        user.rooms.add(room)
        self._rooms.setdefault(room, {})[user.key] = user
        self._recipients.pop(room, None)
        return True

    async def part(self, session: Peer, room: str) -> bool:
        user = session.user
        assert user is not None
        if room not in user.rooms:
            return False
        user.rooms.discard(room)
        self._rooms[room].pop(user.key, None)
        self._recipients.pop(room, None)
        return True

    def is_member(self, user: User, room: str) -> bool:
        # The room's table, not ``room in user.rooms`` (a RoomSet: a call more per message);
        # both change together (join, part, _drop).
        members = self._rooms.get(room)
        return members is not None and members.get(user.key) is user

    async def members(self, room: str) -> list[str]:
        return [u.nick for u in self._rooms.get(room, {}).values()]

    async def member_counts(self, rooms: Sequence[str] | None = None) -> dict[str, int]:
        if rooms is None:
            return {room: len(members) for room, members in self._rooms.items()}
        return {room: len(self._rooms[room]) for room in rooms if self._rooms.get(room)}

    async def online(self) -> list[str]:
        return [u.nick for u in self._users.values()]

    def user(self, key: str) -> User | None:
        return self._users.get(key)

    def session_count(self) -> int:
        return self._sessions

    def hold(self, session: Peer) -> str | None:
        return None

    def release(self, session: Peer) -> None:
        pass

    async def caught_up(self, timeout: float | None = None) -> bool:
        return True  # events go to the sessions as they are committed

    def to_room(self, room: str, frame: bytes) -> None:
        send_to_runs(self._room_sessions(room), frame)

    def to_room_frames(self, room: str, frames: list[bytes]) -> None:
        """Several events to one room, in order: one append per recipient (a burst of 64
        messages to 1,000 members is 1,000 appends, not 64,000)."""
        recipients = self._room_sessions(room)
        if not recipients:
            return
        send_run_to_runs(recipients, frames, b"".join(frames))

    def to_users(self, keys: Iterable[str], frame: bytes) -> None:
        for key in set(keys):
            user = self._users.get(key)
            if user is not None:
                for session in user.sessions:
                    session.send(frame)

    def to_everyone(self, frame: bytes) -> None:
        for user in self._users.values():
            for session in user.sessions:
                session.send(frame)
