"""Read-only requests: who is online and a stream's history."""

from __future__ import annotations

import msgspec

from imchat.protocol import ErrorCode, History, ProtocolError, Users
from imchat.protocol.events import Ok

from ..context import Context
from ..peer import Peer, User
from ..streams import StreamId


async def dm_peer_known(ctx: Context, user: User, other: str) -> bool:
    """Whether ``other`` (a nick key) names someone ``user`` may have a DM stream with: a
    known or online user, a held guest, or a gone guest ``user`` exchanged DMs with (the
    store forgets a guest when its identity ends; its peers keep reading their history with
    it)."""
    if ctx.fanout.user(other) is not None or await ctx.store.lookup_user(other) is not None:
        return True
    if await ctx.store.identity(other) is not None:
        return True
    return StreamId.dm(user.key, other).key in await ctx.store.dm_streams(user.ident)


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
        if not await dm_peer_known(ctx, user, other):
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.with_}")
        stream = StreamId.dm(user.key, other)
    else:
        stream = StreamId.announcements()
    payloads = await ctx.store.history(
        stream,
        after=req.after,
        before=req.before,
        limit=req.effective_limit,
        viewer=user.ident,
    )
    ctx.reply(session, req, Ok(messages=[msgspec.Raw(p) for p in payloads]))
