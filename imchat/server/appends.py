"""Pipelined message requests: a run of say/dm/announce shares one commit, finished in order.

A handler for a message request does not await the store: it returns an :class:`Append`
whose commit is already under way (tasks start in creation order, so messages reach the
store in request order). The hub collects a session's consecutive appends into a run and
:func:`finish_run` awaits them in request order, sending each reply and then the events it
caused, so replies never overtake each other and a burst costs one commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from imchat.protocol import ErrorCode, ProtocolError, Request

from .fanout import Fanout
from .peer import Peer
from .stats import STATS
from .store import Draft, Store, Stored

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Append:
    """A say, dm or announce whose commit is under way."""

    request: Request
    stored: asyncio.Future[Stored]
    #: Sends the reply, then the events; runs once the message is committed.
    finish: Callable[[Stored], None]


#: A run: appends under way and, between them, errors of requests that were refused at once
#: (answered in their turn).
Run = list[Append | ProtocolError]


def start_storing(store: Store, draft: Draft) -> asyncio.Future[Stored]:
    """Start committing ``draft`` now, in request order: a store with ``start_append``
    (SQLite) queues it at once, without a task; otherwise a task (tasks start in creation
    order)."""
    start: Callable[[Draft], asyncio.Future[Stored]] | None = getattr(store, "start_append", None)
    if start is not None:
        return start(draft)
    return asyncio.ensure_future(store.append(draft))


def internal_error(request: Request | None) -> ProtocolError:
    """``internal``: the outcome is unknown, the client retries with the same ``cid``."""
    error = ProtocolError(ErrorCode.INTERNAL, "internal server error")
    return error.with_id(request.id if request is not None else None)


async def finish_run(session: Peer, run: Run, fanout: Fanout) -> None:
    """Answer a run in request order, then let the events held for its replies go out."""
    for item in run:
        if isinstance(item, ProtocolError):
            session.send_error(item)
            continue
        try:
            stored = await item.stored
        except ProtocolError as exc:
            session.send_error(exc.with_id(item.request.id))
            continue
        except Exception:
            log.exception("storing a message from %s failed", session.peer)
            session.send_error(internal_error(item.request))
            continue
        if not stored.duplicate:
            STATS.messages += 1
        item.finish(stored)
    run.clear()
    # Every reply of the run is queued: events held for them may follow.
    fanout.release(session)
