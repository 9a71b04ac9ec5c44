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
import struct
from collections.abc import Callable
from typing import Any

import msgspec

from imchat.protocol import ErrorCode, ProtocolError, Request
from imchat.protocol.events import MessageOk

from .fanout import Fanout, send_run
from .peer import Peer
from .stats import STATS
from .store import Draft, Store, Stored

log = logging.getLogger(__name__)

#: A frame's header and a reply's JSON (:func:`imchat.protocol.encode_message`, inline).
_header = struct.Struct(">I").pack
_encode = msgspec.json.Encoder().encode


class Append(msgspec.Struct):
    """A say, dm or announce whose commit is under way (a struct: made in C, one per
    message)."""

    request: Request
    #: Settles with the message's outcome; with ``index`` set, with the outcomes of the
    #: group of messages it was queued with (a store's ``queue_append``), this one's at
    #: ``index`` (a refusal: the exception in its place).
    stored: asyncio.Future[Any]
    #: Sends the reply, then the events; runs once the message is committed. None for a
    #: message to a room (``room`` set): :func:`finish_run` makes its reply and delivers
    #: its event with its neighbours'.
    finish: Callable[[Stored], None] | None
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


def send_replies(session: Peer, replies: list[bytes]) -> None:
    """Queue a run's replies (of room messages, in order), if any, and empty the list: in one
    append where the session can take several at once."""
    if not replies:
        return
    if len(replies) == 1:
        session.send(replies[0])
    else:
        send_run((session,), replies, b"".join(replies))
    replies.clear()


async def finish_run(session: Peer, run: Run, fanout: Fanout) -> None:
    """Answer a run in request order, then let the events held for its replies go out.

    A room message's reply is made here (``MessageOk``: what ``Ok`` encodes to, cheaper to
    make) and queued with the replies next to it, and its event's frame is delivered with
    its neighbours': the replies go out before anything else the run sends to the session
    (an error, another kind of message, the room's events), so the order is as if each
    were sent in turn.
    """
    room: str | None = None
    frames: list[bytes] = []
    replies: list[bytes] = []
    # The group future already awaited and its outcomes (a run's room messages share one).
    group: asyncio.Future[Any] | None = None
    outcomes: list[Any] = []
    stored_count = 0
    try:
        for item in run:
            if isinstance(item, ProtocolError):
                send_replies(session, replies)
                session.send_error(item)  # a reply: it may precede the events before it
                continue
            try:
                future = item.stored
                if future is group:
                    stored = outcomes[item.index]
                else:
                    stored = await future
                    if item.index >= 0:
                        group, outcomes = future, stored
                        stored = outcomes[item.index]
                if isinstance(stored, Exception):
                    raise stored
            except ProtocolError as exc:
                send_replies(session, replies)
                session.send_error(exc.with_id(item.request.id))
                continue
            except Exception:
                log.exception("storing a message from %s failed", session.peer)
                send_replies(session, replies)
                session.send_error(internal_error(item.request))
                continue
            if not stored.duplicate:
                stored_count += 1
            if item.finish is None:
                # A room message: its reply, inline (``ctx.reply``, ``encode_message`` and
                # a handler's finish: four calls and a partial less per message).
                reply = _encode(MessageOk(id=item.request.id, seq=stored.seq, ts=stored.ts))
                replies.append(_header(len(reply)) + reply)
                if stored.duplicate or stored.published:
                    continue
                payload = stored.payload
                if item.room != room and frames:  # another room: the last one's go first
                    send_replies(session, replies)
                    done, frames = frames, []
                    deliver_to_room(fanout, room or "", done)
                room = item.room
                frames.append(_header(len(payload)) + payload)
                continue
            send_replies(session, replies)
            if frames:  # the room events before it go out first
                done, frames = frames, []
                deliver_to_room(fanout, room or "", done)
            try:
                item.finish(stored)
            except Exception:
                # A bug: the request's outcome is unknown to its client (``internal``: it
                # retries with its cid); the rest of the run is answered as usual.
                log.exception("answering a message from %s failed", session.peer)
                session.send_error(internal_error(item.request))
    finally:
        # Whatever stops the run (cancellation at shutdown), the messages already committed
        # are answered and reach their rooms, and nothing of it is answered twice.
        run.clear()
        STATS.messages += stored_count
        send_replies(session, replies)
        if frames:
            deliver_to_room(fanout, room or "", frames)
    # Every reply of the run is queued: events held for them may follow.
    fanout.release(session)
