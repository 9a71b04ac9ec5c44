"""Who may create a room now: a budget per guest identity and per address, and a cap for guests.

A ``join`` that names no existing room creates one, and rooms are durable: without a bound a
stranger created about 20 permanent rooms a second by joining new names, growing the store and
the room list for good. Joining a room that exists costs none of this. Guests (sessions that
did not log in) spend a token bucket of their identity and one of their address (an IPv4
address or IPv6 /64) per room they create, and create rooms only while fewer than
``guest_room_cap`` exist. Accounts are made by an admin and can be removed, so they have no
budget and the cap does not bind them: a stranger filling the cap cannot stop the users the
operator knows. Every transport's join (native, IRC ``JOIN``, ``/ws``, ``imchat send --create``)
goes through :func:`imchat.server.handlers.rooms.on_join`, the one caller.

The buckets are :mod:`.budgets`' (in Redis on the Redis backend: a cluster shares them).
"""

from __future__ import annotations

import asyncio
import math

from imchat.protocol import ErrorCode, ProtocolError

from .budgets import Buckets
from .config import ServerConfig
from .peer import Peer, User
from .store import RoomInfo, Store


class RoomBudget:
    def __init__(self, config: ServerConfig, buckets: Buckets, store: Store) -> None:
        self.config = config
        self.buckets = buckets
        self.store = store
        #: Rooms this process is creating: joins racing to one new room wait for the first
        #: (a crowd following a link to a new room spends one token, not one each).
        self._creating: dict[str, asyncio.Future[RoomInfo]] = {}

    async def create(self, session: Peer, user: User, name: str) -> RoomInfo:
        """Create room ``name`` for a join that found none, within the budgets (raises as
        :meth:`may_create`); a join racing with another's creation joins that room."""
        creating = self._creating.get(name)
        if creating is None:
            creating = asyncio.ensure_future(self._create(session, user, name))
            self._creating[name] = creating

            def done(future: asyncio.Future[RoomInfo]) -> None:
                self._creating.pop(name, None)
                if not future.cancelled():
                    future.exception()  # retrieved: its joiners may have gone meanwhile

            creating.add_done_callback(done)
            # Shielded: a joiner that goes away does not cancel the others' room.
            return await asyncio.shield(creating)
        try:
            return await asyncio.shield(creating)
        except ProtocolError:
            # The first joiner's budget refused it; this joiner's may not.
            return await self.create(session, user, name)

    async def _create(self, session: Peer, user: User, name: str) -> RoomInfo:
        info = await self.store.room(name)
        if info is not None:
            return info  # created meanwhile (another node, or before this wait)
        await self.may_create(session, user)
        return await self.store.create_room(name)

    async def may_create(self, session: Peer, user: User) -> None:
        """Return if ``user`` may create a room now (spending its tokens), else raise
        ``limit_reached`` (the cap) or ``rate_limited`` with a ``retry_after`` hint."""
        if session.credential is not None:
            return  # an account (or an admin)
        config = self.config
        cap = config.guest_room_cap
        if cap and await self.store.room_count() >= cap:
            raise ProtocolError(
                ErrorCode.LIMIT_REACHED,
                f"this server has {cap} rooms, the most guests may create; join one of them",
            )
        budgets = (
            ("roomrate:id", user.ident, config.guest_rooms_per_minute, config.guest_rooms_burst),
            ("roomrate:addr", session.addr, config.addr_rooms_per_minute, config.addr_rooms_burst),
        )
        for kind, name, per_minute, burst in budgets:
            if per_minute <= 0:
                continue
            if not await self.buckets.take(kind, name, per_minute / 60, burst):
                whose = "you" if kind == "roomrate:id" else "your address"
                # The bucket holds a whole token again within 60 / per_minute seconds.
                wait = 60 / per_minute
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"too many new rooms from {whose}; try again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
