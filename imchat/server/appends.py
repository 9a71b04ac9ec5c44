"""Pipelined message requests: a run of say/dm/announce shares one commit, finished in order.

A handler for a message request does not await the store: it returns an :class:`Append`
whose commit is already under way or queued (tasks start in creation order, and the SQLite
store queues a session's room messages in request order, as one operation per run: see
``SQLiteStore.queue_append``), so messages reach the store in request order. The hub
collects a session's consecutive appends into a run and :func:`finish_run` awaits them in
request order, sending each reply and then the events it caused, so replies never overtake
each other and a burst costs one commit.

Consecutive ``say`` events to one room leave together, after the replies of their requests:
every member gets the run's messages in one append (one call per recipient for a burst of
64, not 64), in the same order as before. Only the sender sees a difference: its replies
come before the events of that stretch instead of alternating with them, and each event
still follows its own request's reply (the contract's rule).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from imchat.protocol import ErrorCode, ProtocolError, Request

from .fanout import Fanout
from .peer import Peer
from .stats import STATS
from .store import Draft, Store, Stored

log = logging.getLogger(__name__)


class Append(msgspec.Struct):
    """A say, dm or announce whose commit is under way (a struct: made in C, one per
    message)."""

    request: Request
    #: Settles with the message's outcome; with ``index`` set, with the outcomes of the
    #: group of messages it was queued with (``SQLiteStore.queue_append``), this one's at
    #: ``index`` (a refusal: the exception in its place).
    stored: asyncio.Future[Any]
    #: Sends the reply, then the events; runs once the message is committed. For a message
    #: to a room (``room`` set) it sends only the reply and returns the event's frame (None:
    #: nothing to deliver), which :func:`finish_run` delivers with its neighbours'.
    finish: Callable[[Stored], bytes | None]
    room: str | None = None
    index: int = -1


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


def deliver_to_room(fanout: Fanout, room: str, frames: list[bytes]) -> None:
    """Deliver a room's events, in order: in one append per recipient where the fan-out
    can (``to_room_frames``), else one by one."""
    many = getattr(fanout, "to_room_frames", None)
    if many is not None and len(frames) > 1:
        many(room, frames)
        return
    for frame in frames:
        fanout.to_room(room, frame)


async def finish_run(session: Peer, run: Run, fanout: Fanout) -> None:
    """Answer a run in request order, then let the events held for its replies go out."""
    room: str | None = None
    frames: list[bytes] = []
    try:
        for item in run:
            if isinstance(item, ProtocolError):
                session.send_error(item)  # a reply: it may precede the events before it
                continue
            try:
                stored = await item.stored
                if item.index >= 0:
                    stored = stored[item.index]
                    if isinstance(stored, Exception):
                        raise stored
            except ProtocolError as exc:
                session.send_error(exc.with_id(item.request.id))
                continue
            except Exception:
                log.exception("storing a message from %s failed", session.peer)
                session.send_error(internal_error(item.request))
                continue
            if not stored.duplicate:
                STATS.messages += 1
            if item.room is None and frames:  # the room events before it go out first
                done, frames = frames, []
                deliver_to_room(fanout, room or "", done)
            try:
                frame = item.finish(stored)
            except Exception:
                # A bug: the request's outcome is unknown to its client (``internal``: it
                # retries with its cid); the rest of the run is answered as usual.
                log.exception("answering a message from %s failed", session.peer)
                session.send_error(internal_error(item.request))
                continue
            if frame is None:
                continue
            if item.room != room and frames:
                done, frames = frames, []
                deliver_to_room(fanout, room or "", done)
            room = item.room
            frames.append(frame)
    finally:
        # Whatever stops the run (cancellation at shutdown), the messages already committed
        # and answered reach their rooms, and nothing of it is answered twice.
        run.clear()
        if frames:
            deliver_to_room(fanout, room or "", frames)
    # Every reply of the run is queued: events held for them may follow.
    fanout.release(session)
