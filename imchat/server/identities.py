"""Guest identities, scoped presence and delivery confirmation (protocol revision 2).

A guest nick belongs to the identity that took it (``resume`` continues it) until its hold
ends; an account outranks it. These helpers are shared by the hub and both fanouts, so the
rules read the same on one server and on a cluster.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imchat.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from .peer import Peer, User

#: Undelivered DMs read and written per batch at hello: a queue of thousands of large DMs
#: is never loaded at once, and the next batch waits until the client takes this one.
DM_BATCH = 100


def nick_taken(nick: str, held_until: float | None) -> ProtocolError:
    """``nick_taken`` that says whether the nick is online or held, and for how long."""
    if held_until is None:
        return ProtocolError(
            ErrorCode.NICK_TAKEN,
            f"{nick} is online (a guest identity holds it; hello needs its resume)",
        )
    left = max(1, math.ceil(held_until - time.time()))
    return ProtocolError(
        ErrorCode.NICK_TAKEN,
        f"{nick} is held for a guest who left, for {left} s more"
        " (hello with its resume continues it; an account for it ends the hold)",
    )


def account_took(nick: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.NICK_TAKEN, f"{nick} is now a registered account: this guest identity ended"
    )


def evict(user: User) -> None:
    """End an online guest identity an account took over: fatal ``nick_taken`` to each of
    its sessions. The caller drops the user from its tables first, so the account's sessions
    never join it."""
    error = account_took(user.nick)
    for session in list(user.sessions):
        session.fail(error)


async def written_to_any(sessions: Iterable[Peer]) -> bool:
    """Wait until what was just queued to these sessions was written to at least one of
    them; False if every one of them ended (or was cut) first."""
    waiters = [asyncio.ensure_future(s.wait_written()) for s in sessions if not s.closing]
    try:
        while waiters:
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if any(not w.cancelled() and w.result() for w in done):
                return True
            waiters = list(pending)
        return False
    finally:
        for waiter in waiters:
            waiter.cancel()


def dm_peer_keys(streams: Iterable[str], own_key: str) -> list[str]:
    """The other nick keys of DM streams named ``d:<key> <key>``."""
    peers: set[str] = set()
    for stream in streams:
        if stream.startswith("d:"):
            peers.update(stream[2:].split(" "))
    peers.discard(own_key)
    return sorted(peers)
