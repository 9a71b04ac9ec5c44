"""Message requests (say, dm, announce): each starts its commit and returns an ``Append``.

None of these awaits the store: the hub runs a session's consecutive message requests
together (see :mod:`imchat.server.appends`), so a burst shares one commit.
"""

from __future__ import annotations

import asyncio

from imchat.protocol import Announce, Dm, ErrorCode, ProtocolError, Say, encode_frame
from imchat.protocol.events import AnnounceEvent, DmEvent, MsgEvent, Ok

from ..appends import Append, start_storing
from ..context import Context
from ..message_features import REPLY, Feature
from ..peer import Peer, User, budget_key
from ..store import Draft, Stored
from ..streams import ROOM_STREAMS, StreamId


def _feature(user: User, reply_to: int | None, feature: Feature | None) -> Feature | None:
    """Revision 3: the target rules a message is stored under: those of an edit, delete or
    reaction (``feature``), or of a ``reply_to``."""
    if feature is None and reply_to is not None:
        return Feature(REPLY, reply_to, user.key, user.admin)
    return feature


def _kind_target(feature: Feature | None) -> tuple[str | None, int | None]:
    """``kind`` and ``target`` of an edit, delete or reaction's event."""
    if feature is None or feature.kind == REPLY:
        return None, None
    return feature.kind, feature.target


def start_say(ctx: Context, session: Peer, req: Say, *, feature: Feature | None = None) -> Append:
    """``feature``: this say is the edit, delete or reaction it describes (revision 3).

    Its reply and event's frame are made by :func:`imchat.server.appends.finish_run` once it
    is committed (the Append's ``finish`` is None)."""
    room = req.room
    # ctx.member, inline: a call less per message.
    user = session.user
    assert user is not None  # guaranteed by the hello_required check
    # A detached (HTTP) poster posts without joining; its caller checked the room exists.
    if not user.detached and not ctx.fanout.is_member(user, room):
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room}")
    if feature is None and req.reply_to is None:
        # A plain say (nearly all): what _feature and _kind_target would find, without them.
        event = MsgEvent(room=room, from_=user.nick, text=req.text, kind=req.kind)
    else:
        feature = _feature(user, req.reply_to, feature)
        kind, target = _kind_target(feature)
        event = MsgEvent(
            room=room,
            from_=user.nick,
            text=req.text,
            kind=kind or req.kind,
            reply_to=req.reply_to,
            target=target,
        )

    draft = Draft(
        ROOM_STREAMS[room],
        user.key,
        req.cid,
        event,
        hold=ctx.fanout.hold(session) if ctx.holds else None,
        feature=feature,
        as_member=not user.detached,
        owner=user.ident,
    )
    queue = ctx.queue_append
    if queue is not None:  # with the session's other room messages of this run
        group, index = queue(draft, session)
        return Append(req, group, None, room, index)
    # start_storing, inline (a call less per message).
    start = getattr(ctx.store, "start_append", None)
    stored = start(draft) if start is not None else start_storing(ctx.store, draft)
    return Append(req, stored, None, room)


def start_dm(ctx: Context, session: Peer, req: Dm, *, feature: Feature | None = None) -> Append:
    """Store a DM and hand it to the recipient exactly once (see :mod:`..dm_delivery`)."""
    user = ctx.user(session)
    feature = _feature(user, req.reply_to, feature)
    kind, target = _kind_target(feature)
    to_key = req.to.lower()
    stream = StreamId.dm(user.key, to_key)
    recipient = ctx.fanout.user(to_key)
    to_self = to_key == user.key
    live = to_self or ctx.dms.is_live(to_key)
    hold = ctx.fanout.hold(session)

    to_ident = user.ident if to_self else recipient.ident if recipient is not None else ""

    def draft(to_nick: str) -> Draft:
        event = DmEvent(
            from_=user.nick,
            to=to_nick,
            text=req.text,
            kind=kind,
            reply_to=req.reply_to,
            target=target,
        )
        return Draft(
            stream,
            user.key,
            req.cid,
            event,
            None if live else to_ident,
            hold=hold,
            feature=feature,
            owner=user.ident,
            dm_idents=(user.ident, to_ident),
            recipient_ident=to_ident,
            max_queued=ctx.config.max_queued,
            max_queued_per_sender=ctx.config.max_queued_per_sender,
            queue_source=budget_key(session, user),
        )

    async def look_up_and_append() -> Stored:
        """To an account or a held guest identity (rev 2) not online here; else none."""
        nonlocal to_ident
        identity = await ctx.store.identity(to_key)
        ctx.dms.lookups += 1  # before anything is stored: see DmDelivery.lookups
        if identity is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.to}")
        to_ident = identity.ident
        return await ctx.store.append(draft(identity.nick))

    def finish(stored: Stored) -> None:
        ctx.reply(session, req, Ok(seq=stored.seq, ts=stored.ts))
        if stored.duplicate or stored.published:
            return
        frame = encode_frame(stored.payload)
        ctx.fanout.to_users((user.key,), frame)
        if not to_self:
            ctx.dms.after_commit(to_key, to_ident, stream, stored.seq, frame, live)

    if recipient is not None:
        # Online here: started now, like a say, so it keeps its place among the run's
        # other messages (a task would reach the store a loop turn after them).
        stored = start_storing(ctx.store, draft(recipient.nick))
    else:
        stored = asyncio.ensure_future(look_up_and_append())
    return Append(req, stored, finish)


def start_announce(
    ctx: Context, session: Peer, req: Announce, *, feature: Feature | None = None
) -> Append:
    """``feature``: a reaction to an announcement, which anyone may add (revision 3)."""
    user = ctx.user(session)
    if feature is None and not user.admin:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only admins may announce")
    kind, target = _kind_target(feature)
    event = AnnounceEvent(from_=user.nick, text=req.text, kind=kind, target=target)

    def finish(stored: Stored) -> None:
        if stored.duplicate:
            delivered = 0
        elif stored.delivered is not None:
            delivered = stored.delivered
        else:
            delivered = ctx.fanout.session_count()
        ctx.reply(session, req, Ok(seq=stored.seq, ts=stored.ts, delivered=delivered))
        if not (stored.duplicate or stored.published):
            ctx.fanout.to_everyone(encode_frame(stored.payload))

    draft = Draft(
        StreamId.announcements(),
        user.key,
        req.cid,
        event,
        hold=ctx.fanout.hold(session),
        feature=feature,
        owner=user.ident,
    )
    return Append(req, start_storing(ctx.store, draft), finish)
