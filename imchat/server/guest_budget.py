"""How many guest identities one address may begin: a token bucket per address.

Every ``hello`` that takes a free guest nick begins an identity the store keeps while it
has sessions and for ``guest_hold`` seconds after (rev 2), and ``hello`` spent nothing, so
one address could begin thousands a second (each a store write and a held record). A guest
coming back with its ``resume`` continues its identity and spends nothing, nor do accounts:
after a restart every client reconnects at once without noticing this bound.
"""

from __future__ import annotations

import math

from imchat.protocol import ErrorCode, ProtocolError

from .budgets import Buckets
from .config import ServerConfig


async def may_begin_guest(config: ServerConfig, buckets: Buckets, addr: str) -> None:
    """Spend a token of ``addr`` for a new guest identity, or raise ``rate_limited``."""
    per_minute = config.addr_guests_per_minute
    if per_minute <= 0:
        return
    if await buckets.take("newguest:addr", addr, per_minute / 60, config.addr_guests_burst):
        return
    wait = 60 / per_minute  # a whole token again within this
    raise ProtocolError(
        ErrorCode.RATE_LIMITED,
        f"too many new guests from your address; try again in {math.ceil(wait)} s",
        retry_after=wait,
    )
