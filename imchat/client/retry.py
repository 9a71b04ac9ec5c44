"""Sending a message again after an answer that means "not now" or "not known".

``rate_limited`` stored nothing, and ``internal`` leaves the outcome unknown; sent again with
the same ``cid``, a message is stored at most once either way. ``imchat send`` and the
session's outbox (the TUI) both pace themselves this way, so a burst beyond the server's
rate limit is delayed rather than lost.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from imchat.protocol import Request

from .connection import Message, ServerError

#: Waits before each new attempt; after the last, the error is the caller's (about 8 s).
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)
RETRIED_CODES = frozenset({"rate_limited", "internal"})


class Requester(Protocol):
    async def request(self, message: Request | str, /, **fields: Any) -> Message: ...


async def request_retrying(
    conn: Requester, request: Request, delays: tuple[float, ...] = RETRY_DELAYS
) -> Message:
    """``conn.request(request)``, again after each retried error while ``delays`` last."""
    for delay in delays:
        try:
            return await conn.request(request)
        except ServerError as exc:
            if exc.code not in RETRIED_CODES:
                raise
        await asyncio.sleep(delay)
    return await conn.request(request)
