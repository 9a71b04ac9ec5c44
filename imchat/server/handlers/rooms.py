"""Room requests: join, part, topic and the room list (``say`` is in :mod:`.messages`)."""

from __future__ import annotations

from imchat.protocol import ErrorCode, Join, Part, ProtocolError, Rooms, Topic
from imchat.protocol import encode_message as encode
from imchat.protocol.events import JoinedEvent, Ok, PartedEvent, RoomEntry, TopicEvent

from ..context import Context, now
from ..message_features import marker_owner
from ..peer import Peer
from ..streams import StreamId


async def on_join(ctx: Context, session: Peer, req: Join) -> None:
    user = ctx.user(session)
    limit = ctx.config.max_rooms
    if limit and req.room not in user.rooms and len(user.rooms) >= limit:
        # Checked before the room exists: a refused join creates nothing.
        raise ProtocolError(ErrorCode.LIMIT_REACHED, f"you are in {limit} rooms, the most allowed")
    info = await ctx.store.room(req.room)
    if info is None:
        # A new room is durable: guests spend a budget on it (checked before it exists).
        info = await ctx.room_budget.create(session, user, req.room)
    if ctx.fanout.user(user.key) is not user:
        return  # its last session ended while we awaited: joining now leaves a ghost member
    joined = await ctx.fanout.join(session, req.room)
    members = await ctx.fanout.members(req.room)
    read = await ctx.store.marker(marker_owner(user), StreamId.room(req.room))  # revision 3
    ctx.reply(
        session,
        req,
        Ok(room=req.room, topic=info.topic, members=members, last_seq=info.last_seq, read=read),
    )
    if joined:
        ctx.fanout.to_room(req.room, encode(JoinedEvent(room=req.room, nick=user.nick, ts=now())))


async def on_part(ctx: Context, session: Peer, req: Part) -> None:
    user = ctx.member(session, req.room)
    send = await ctx.fanout.part(session, req.room)
    ctx.reply(session, req, Ok())
    if not send:
        return
    frame = encode(PartedEvent(room=req.room, nick=user.nick, ts=now()))
    ctx.fanout.to_room(req.room, frame)
    ctx.fanout.to_users((user.key,), frame)


async def on_topic(ctx: Context, session: Peer, req: Topic) -> None:
    user = ctx.member(session, req.room)
    await ctx.store.set_topic(req.room, req.text)
    ctx.reply(session, req, Ok())
    event = TopicEvent(room=req.room, topic=req.text, by=user.nick, ts=now())
    ctx.fanout.to_room(req.room, encode(event))


async def on_rooms(ctx: Context, session: Peer, req: Rooms) -> None:
    """One page of rooms by name: a reply stays within max_topic x limit, and its work within
    the page (plus the names), whatever exists."""
    page, more = await ctx.store.room_page(req.after, req.effective_limit)
    counts = await ctx.fanout.member_counts([info.name for info in page])
    rooms = [
        RoomEntry(room=info.name, count=counts.get(info.name, 0), topic=info.topic) for info in page
    ]
    ctx.reply(session, req, Ok(rooms=rooms, more=more))
