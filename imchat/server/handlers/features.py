"""Revision 3 requests: edit, delete, react (messages), mark, markers, typing, search.

Edits, deletes and reactions are messages of their own: they go through the say/dm/announce
starters of :mod:`.messages` (so ``cid``, ``seq``, group commit, holds and DM delivery stay
one code path) with their target rules as a :class:`Feature`, which the store checks in the
same step as storing. The others are plain handlers.
"""

from __future__ import annotations

import msgspec

from imchat.protocol import (
    Announce,
    Delete,
    Dm,
    Edit,
    ErrorCode,
    Mark,
    Markers,
    ProtocolError,
    React,
    Say,
    Search,
    StreamRequest,
    Typing,
    encode_message,
    nick_key,
)
from imchat.protocol.events import MarkerEntry, MarkerEvent, Ok, TypingEvent

from ..appends import Append
from ..context import Context
from ..message_features import (
    DELETE,
    EDIT,
    REACT,
    UNREACT,
    Feature,
    SearchScope,
    marker_owner,
)
from ..peer import Peer, User
from ..streams import StreamId, StreamKind
from .messages import start_announce, start_dm, start_say
from .queries import dm_peer_known

# -- edits, deletes, reactions: messages of their own -----------------------------------------


def start_edit(ctx: Context, session: Peer, req: Edit) -> Append:
    if req.announcements:
        raise ProtocolError(ErrorCode.FORBIDDEN, "announcements cannot be edited")
    return _start(ctx, session, req, EDIT, req.text)


def start_delete(ctx: Context, session: Peer, req: Delete) -> Append:
    if req.announcements:
        raise ProtocolError(ErrorCode.FORBIDDEN, "announcements cannot be deleted")
    return _start(ctx, session, req, DELETE, "")


def start_react(ctx: Context, session: Peer, req: React) -> Append:
    return _start(ctx, session, req, UNREACT if req.remove else REACT, req.emoji)


def _start(ctx: Context, session: Peer, req: Edit | Delete | React, kind: str, text: str) -> Append:
    user = ctx.user(session)
    emoji = text if kind in (REACT, UNREACT) else ""
    feature = Feature(kind, req.seq, user.key, user.admin, emoji)
    # The request as the say/dm/announce it stores; same id and cid, so replies match.
    if req.room is not None:
        say = Say(id=req.id, room=req.room, text=text, cid=req.cid)
        return start_say(ctx, session, say, feature=feature)
    if req.with_ is not None:
        dm = Dm(id=req.id, to=req.with_, text=text, cid=req.cid)
        return start_dm(ctx, session, dm, feature=feature)
    announce = Announce(id=req.id, text=text, cid=req.cid)
    return start_announce(ctx, session, announce, feature=feature)


# -- streams as requests name them --------------------------------------------------------------


async def _stream(ctx: Context, session: Peer, req: StreamRequest, *, member: bool) -> StreamId:
    """The stream a request names; ``member``: a room needs the user's membership (else any
    existing room)."""
    user = ctx.user(session)
    if req.room is not None:
        if member:
            ctx.member(session, req.room)
        elif await ctx.store.room(req.room) is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"no room called {req.room}")
        return StreamId.room(req.room)
    if req.with_ is not None:
        other = nick_key(req.with_)
        if not await dm_peer_known(ctx, user, other):
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.with_}")
        return StreamId.dm(user.key, other)
    return StreamId.announcements()


async def _entry(ctx: Context, user: User, stream: StreamId, seq: int) -> MarkerEntry:
    """A stream as ``user`` sees it: a DM by the other user's nick."""
    if stream.kind is StreamKind.ROOM:
        return MarkerEntry(room=stream.room_name, seq=seq)
    if stream.kind is StreamKind.ANNOUNCEMENTS:
        return MarkerEntry(announcements=True, seq=seq)
    keys = stream.dm_keys or (user.key, user.key)
    other = keys[1] if keys[0] == user.key else keys[0]
    online = ctx.fanout.user(other)
    if online is not None:
        return MarkerEntry(with_=online.nick, seq=seq)
    record = await ctx.store.lookup_user(other)
    return MarkerEntry(with_=record.nick if record is not None else other, seq=seq)


# -- read markers -------------------------------------------------------------------------------


async def on_mark(ctx: Context, session: Peer, req: Mark) -> None:
    """Move the user's marker forward; the ``marker`` event goes to all its sessions."""
    user = ctx.user(session)
    stream = await _stream(ctx, session, req, member=True)
    moved = await ctx.store.mark(marker_owner(user), stream, req.seq)
    if moved is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"seq {req.seq} is above the last seq")
    ctx.reply(session, req, Ok())
    if moved:
        entry = await _entry(ctx, user, stream, req.seq)
        event = MarkerEvent(
            seq=req.seq, room=entry.room, with_=entry.with_, announcements=entry.announcements
        )
        ctx.fanout.to_users((user.key,), encode_message(event))


async def on_markers(ctx: Context, session: Peer, req: Markers) -> None:
    user = ctx.user(session)
    entries = [
        await _entry(ctx, user, stream, seq)
        for stream, seq in await ctx.store.markers(marker_owner(user))
    ]
    ctx.reply(session, req, Ok(markers=entries))


# -- typing -------------------------------------------------------------------------------------


async def on_typing(ctx: Context, session: Peer, req: Typing) -> None:
    """Forwarded (throttled) to the room's other members or the DM peer; never stored."""
    user = ctx.user(session)
    stream = await _stream(ctx, session, req, member=True)
    ctx.reply(session, req, Ok())
    if not ctx.typing.allow(user.key, stream):
        return
    if req.room is not None:
        members = await ctx.fanout.members(req.room)
        targets = [nick_key(nick) for nick in members if nick_key(nick) != user.key]
        event = TypingEvent(from_=user.nick, room=req.room)
    else:
        keys = stream.dm_keys or ()
        targets = [key for key in keys if key != user.key]
        event = TypingEvent(from_=user.nick, with_=user.nick)
    if targets:
        ctx.fanout.to_users(targets, encode_message(event))


# -- search -------------------------------------------------------------------------------------


async def on_search(ctx: Context, session: Peer, req: Search) -> None:
    """The named stream (any room), else the user's rooms, DM streams and announcements."""
    user = ctx.user(session)
    if req.names_stream:
        scope = SearchScope((await _stream(ctx, session, req, member=False),))
    else:
        rooms = tuple(StreamId.room(room) for room in sorted(user.rooms))
        scope = SearchScope((*rooms, StreamId.announcements()), dm_user=user.key)
    result = await ctx.store.search(scope, req.text, before=req.before, limit=req.effective_limit)
    messages = [msgspec.Raw(payload) for payload in result.messages]
    ctx.reply(session, req, Ok(messages=messages, more=result.more))
