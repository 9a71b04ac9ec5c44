"""Read-only requests: who is online and a stream's history."""

from __future__ import annotations

import msgspec

from imchat.protocol import ErrorCode, History, ProtocolError, Users
from imchat.protocol.events import Ok

from ..context import Context
from ..peer import Peer
from ..streams import StreamId


async def on_users(ctx: Context, session: Peer, req: Users) -> None:
    ctx.reply(session, req, Ok(users=await ctx.fanout.online()))


async def on_history(ctx: Context, session: Peer, req: History) -> None:
    user = ctx.user(session)
    if req.room is not None:
        if await ctx.store.room(req.room) is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"no room called {req.room}")
        stream = StreamId.room(req.room)
    elif req.with_ is not None:
        other = req.with_.lower()
        if await ctx.store.lookup_user(other) is None and ctx.fanout.user(other) is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.with_}")
        stream = StreamId.dm(user.key, other)
    else:
        stream = StreamId.announcements()
    payloads = await ctx.store.history(
        stream, after=req.after, before=req.before, limit=req.effective_limit
    )
    ctx.reply(session, req, Ok(messages=[msgspec.Raw(p) for p in payloads]))
