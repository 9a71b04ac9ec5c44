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
from ..peer import Peer
from ..store import Draft, Stored
from ..streams import StreamId


def start_say(ctx: Context, session: Peer, req: Say) -> Append:
    user = ctx.member(session, req.room)
    event = MsgEvent(room=req.room, from_=user.nick, text=req.text, kind=req.kind)

    def finish(stored: Stored) -> None:
        ctx.reply(session, req, Ok(seq=stored.seq, ts=stored.ts))
        if not (stored.duplicate or stored.published):
            ctx.fanout.to_room(req.room, encode_frame(stored.payload))

    hold = ctx.fanout.hold(session)
    draft = Draft(StreamId.room(req.room), user.key, req.cid, event, hold=hold)
    return Append(req, start_storing(ctx.store, draft), finish)


def start_dm(ctx: Context, session: Peer, req: Dm) -> Append:
    """Store a DM and hand it to the recipient exactly once (see :mod:`..dm_delivery`)."""
    user = ctx.user(session)
    to_key = req.to.lower()
    stream = StreamId.dm(user.key, to_key)
    recipient = ctx.fanout.user(to_key)
    to_self = to_key == user.key
    live = to_self or ctx.dms.is_live(to_key)
    hold = ctx.fanout.hold(session)

    async def append() -> Stored:
        to_nick = recipient.nick if recipient is not None else None
        if to_nick is None:
            record = await ctx.store.lookup_user(to_key)
            if record is None:
                raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.to}")
            to_nick = record.nick
        event = DmEvent(from_=user.nick, to=to_nick, text=req.text)
        pending_for = None if live else to_key
        draft = Draft(stream, user.key, req.cid, event, pending_for, hold=hold)
        return await ctx.store.append(draft)

    def finish(stored: Stored) -> None:
        ctx.reply(session, req, Ok(seq=stored.seq, ts=stored.ts))
        if stored.duplicate or stored.published:
            return
        frame = encode_frame(stored.payload)
        ctx.fanout.to_users((user.key,), frame)
        if not to_self:
            ctx.dms.after_commit(to_key, stream, stored.seq, frame, live)

    return Append(req, asyncio.ensure_future(append()), finish)


def start_announce(ctx: Context, session: Peer, req: Announce) -> Append:
    user = ctx.user(session)
    if not user.admin:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only admins may announce")
    event = AnnounceEvent(from_=user.nick, text=req.text)

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

    draft = Draft(StreamId.announcements(), user.key, req.cid, event, hold=ctx.fanout.hold(session))
    return Append(req, start_storing(ctx.store, draft), finish)
