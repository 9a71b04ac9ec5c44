"""What every store's ``queue_append`` promises (SQLite's and Redis's), checked by each
store's own tests with its own fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from imchat.server.store import Draft


async def check_a_sessions_appends_share_one_future(
    store: Any, say: Callable[[str], Draft]
) -> tuple[object, asyncio.Future[Any]]:
    """A session's appends share one future until anything else is queued: another
    session's append, or a plain one; nothing queued after a group is stored before it.
    Returns alice's owner and her last group's future, for checks of a store's own."""
    alice, bob = object(), object()
    a1, i1 = store.queue_append(say("a1"), alice)
    a2, i2 = store.queue_append(say("a2"), alice)
    assert a2 is a1 and (i1, i2) == (0, 1)
    b1, j = store.queue_append(say("b1"), bob)  # another session: a group of its own
    assert b1 is not a1 and j == 0
    plain = store.start_append(say("plain"))  # queued after bob's group: stored after it
    a3, k = store.queue_append(say("a3"), alice)  # alice's first group is closed
    assert a3 is not a1 and k == 0
    assert [r.seq for r in await a1] == [1, 2]
    assert [r.seq for r in await b1] == [3]
    assert (await plain).seq == 4
    assert [r.seq for r in await a3] == [5]
    return alice, a3
