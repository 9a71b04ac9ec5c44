"""Handlers of revision 3: edit, delete, react, mark, markers, typing, search.

Edits, deletes and reactions are messages: they go through the hub's say/dm/announce
appenders (so ``cid``, ``seq``, group commit, holds and DM delivery stay one code path), with
the target rules attached as a :class:`Feature` that the store checks atomically with storing.
The rest are plain request handlers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

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
    Request,
    Say,
    Search,
    StreamRequest,
    Typing,
    encode_message,
    nick_key,
)

from .message_features import (
    DELETE,
    EDIT,
    REACT,
    REPLY,
    TYPING_INTERVAL,
    UNREACT,
    Feature,
    SearchScope,
    dm_participants,
)
from .store import ANNOUNCE_STREAM, dm_stream, room_stream

if TYPE_CHECKING:
    from .fanout import User
    from .hub import Hub, _Append
    from .session import Session

#: Throttle entries kept before stale ones are swept.
TYPING_SWEEP_AT = 10000


def reply_feature(user: User, reply_to: int | None) -> Feature | None:
    """The check a say/dm with ``reply_to`` carries (None without one)."""
    if reply_to is None:
        return None
    return Feature(REPLY, reply_to, user.key, user.admin)


class FeatureHandlers:
    """Revision 3 requests, for one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        #: (user key, stream) -> monotonic time of the last typing forwarded.
        self._typing: dict[tuple[str, str], float] = {}

    @property
    def handlers(self) -> dict[type[Request], Callable[[Session, Any], Awaitable[None]]]:
        return {
            Mark: self.on_mark,
            Markers: self.on_markers,
            Typing: self.on_typing,
            Search: self.on_search,
        }

    @property
    def appenders(self) -> dict[type[Request], Callable[[Session, Any], _Append]]:
        return {Edit: self.start_edit, Delete: self.start_delete, React: self.start_react}

    # -- edits, deletes, reactions: messages of their own -----------------------------------

    def start_edit(self, session: Session, req: Edit) -> _Append:
        if req.announcements:
            raise ProtocolError(ErrorCode.FORBIDDEN, "announcements cannot be edited")
        return self._start(session, req, EDIT, req.text)

    def start_delete(self, session: Session, req: Delete) -> _Append:
        if req.announcements:
            raise ProtocolError(ErrorCode.FORBIDDEN, "announcements cannot be deleted")
        return self._start(session, req, DELETE, "")

    def start_react(self, session: Session, req: React) -> _Append:
        return self._start(session, req, UNREACT if req.remove else REACT, req.emoji)

    def _start(self, session: Session, req: Edit | Delete | React, kind: str, text: str) -> _Append:
        user = self.hub._user(session)
        emoji = text if kind in (REACT, UNREACT) else ""
        feature = Feature(kind, req.seq, user.key, user.admin, emoji)
        extra = {"kind": kind, "target": req.seq}
        if req.room is not None:
            say = Say(id=req.id, room=req.room, text=text, cid=req.cid)
            return self.hub.start_say(session, say, extra=extra, feature=feature)
        if req.with_ is not None:
            dm = Dm(id=req.id, to=req.with_, text=text, cid=req.cid)
            return self.hub.start_dm(session, dm, extra=extra, feature=feature)
        announce = Announce(id=req.id, text=text, cid=req.cid)
        return self.hub.start_announce(session, announce, extra=extra, feature=feature)

    # -- read markers ----------------------------------------------------------------------

    async def _stream(self, session: Session, req: StreamRequest, *, member: bool) -> str:
        """The stream a request names; ``member``: a room needs the user's membership."""
        user = self.hub._user(session)
        if req.room is not None:
            if member:
                self.hub._member(session, req.room)
            elif await self.hub.store.room(req.room) is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"no room called {req.room}")
            return room_stream(req.room)
        if req.with_ is not None:
            other = nick_key(req.with_)
            known = self.hub.fanout.user(other) or await self.hub.store.lookup_user(other)
            if known is None:
                raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no user called {req.with_}")
            return dm_stream(user.key, other)
        return ANNOUNCE_STREAM

    async def _stream_fields(self, user: User, stream: str) -> dict[str, Any]:
        """How a stream is named to ``user``: a DM by the other user's nick."""
        if stream.startswith("r:"):
            return {"room": stream[2:]}
        if stream == ANNOUNCE_STREAM:
            return {"announcements": True}
        keys = dm_participants(stream)
        other = next((k for k in keys if k != user.key), user.key)
        online = self.hub.fanout.user(other)
        if online is not None:
            return {"with": online.nick}
        record = await self.hub.store.lookup_user(other)
        return {"with": record.nick if record is not None else other}

    async def on_mark(self, session: Session, req: Mark) -> None:
        user = self.hub._user(session)
        stream = await self._stream(session, req, member=True)
        moved = await self.hub.store.mark(user.key, stream, req.seq)
        if moved is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"seq {req.seq} is above the last seq")
        self.hub.reply(session, req, {})
        if moved:
            fields = await self._stream_fields(user, stream)
            event = {"type": "marker", **fields, "seq": req.seq}
            self.hub.fanout.to_users((user.key,), encode_message(event))

    async def on_markers(self, session: Session, req: Markers) -> None:
        user = self.hub._user(session)
        markers = [
            {**await self._stream_fields(user, stream), "seq": seq}
            for stream, seq in await self.hub.store.markers(user.key)
        ]
        self.hub.reply(session, req, {"markers": markers})

    # -- typing ----------------------------------------------------------------------------

    async def on_typing(self, session: Session, req: Typing) -> None:
        user = self.hub._user(session)
        stream = await self._stream(session, req, member=True)
        self.hub.reply(session, req, {})
        now = time.monotonic()
        key = (user.key, stream)
        if now - self._typing.get(key, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return
        if len(self._typing) >= TYPING_SWEEP_AT:
            self._typing = {k: t for k, t in self._typing.items() if now - t < TYPING_INTERVAL}
        self._typing[key] = now
        if req.room is not None:
            members = await self.hub.fanout.members(req.room)
            targets = [nick_key(nick) for nick in members if nick_key(nick) != user.key]
            event = {"type": "typing", "room": req.room, "from": user.nick}
        else:
            other = next((k for k in dm_participants(stream) if k != user.key), None)
            targets = [other] if other is not None else []
            event = {"type": "typing", "with": user.nick, "from": user.nick}
        if targets:
            self.hub.fanout.to_users(targets, encode_message(event))

    # -- search ----------------------------------------------------------------------------

    async def on_search(self, session: Session, req: Search) -> None:
        user = self.hub._user(session)
        if req.names_stream:
            scope = SearchScope((await self._stream(session, req, member=False),))
        else:
            rooms = tuple(room_stream(room) for room in sorted(user.rooms))
            scope = SearchScope((*rooms, ANNOUNCE_STREAM), dm_user=user.key)
        result = await self.hub.store.search(
            scope, req.text, before=req.before, limit=req.effective_limit
        )
        self.hub.reply(
            session,
            req,
            {"messages": [msgspec.Raw(p) for p in result.messages], "more": result.more},
        )
