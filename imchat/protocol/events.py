"""Typed server frames: every reply and event, one struct each, a tagged union on ``type``.

The server builds frames only through these structs and encodes each once
(:func:`imchat.protocol.encode_message`); a client decodes a payload with
:func:`decode_event` and dispatches on the class. Optional fields default to ``None`` and are
left out of the JSON (``omit_defaults``), so a field the contract makes optional is absent
rather than ``null``; fields a frame always carries have no default. Unknown fields are
ignored when decoding, as the contract asks of receivers.

``from`` and ``with`` are Python keywords: the attributes are ``from_`` and ``with_``.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec

from .errors import ProtocolError, RequestId


class ServerFrame(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of every frame the server sends."""


# -- stream-naming entries (revision 3) -----------------------------------------------------


class MarkerEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One read marker in ``ok.markers``: the stream it is in and its ``seq``."""

    seq: int
    room: str | None = None
    with_: str | None = msgspec.field(default=None, name="with")
    announcements: bool | None = None


class RoomEntry(msgspec.Struct, kw_only=True):
    """One room in the ``rooms`` reply."""

    room: str
    count: int
    topic: str


# -- replies --------------------------------------------------------------------------------


class Welcome(ServerFrame, tag="welcome"):
    proto: int
    nick: str
    server: str
    max_frame: int
    max_text: int
    admin: bool
    id: RequestId | None = None
    # Revision 2.
    max_topic: int | None = None
    account: bool | None = None
    epoch: str | None = None
    guest_hold: int | None = None
    resume: str | None = None
    motd: str | None = None


class Pong(ServerFrame, tag="pong"):
    id: RequestId | None = None


class Ok(ServerFrame, tag="ok"):
    """The generic success reply; each request fills the fields the contract names for it."""

    id: RequestId | None = None
    # join
    room: str | None = None
    topic: str | None = None
    members: list[str] | None = None
    last_seq: int | None = None
    read: int | None = None
    # say, dm, announce, edit, delete, react
    seq: int | None = None
    ts: float | None = None
    delivered: int | None = None
    # rooms
    rooms: list[RoomEntry] | None = None
    more: bool | None = None
    # users
    users: list[str] | None = None
    # history, search: the stored events exactly as they were sent (the server passes each
    # as msgspec.Raw; a client gets dicts, which decode_stored/event_from_dict type)
    messages: list[Any] | None = None
    # markers
    markers: list[MarkerEntry] | None = None


class MessageOk(ServerFrame, kw_only=True, tag="ok"):
    """The ``ok`` of a room message (``say``, and an edit, delete or reaction in a room),
    encoded by the server: exactly the JSON :class:`Ok` gives with these fields (the same
    tag, names and order; ``tests/test_events.py`` holds them equal), with three fields to
    fill and walk instead of sixteen. Not a member of :data:`Event`: clients decode ``Ok``."""

    id: RequestId | None = None
    seq: int
    ts: float


class ErrorReply(ServerFrame, tag="error"):
    """An error reply (with the request's ``id``) or a fatal error event (without)."""

    code: str
    message: str
    id: RequestId | None = None
    #: An extension: seconds after which a ``rate_limited`` request may succeed.
    retry_after: float | None = None

    @classmethod
    def of(cls, error: ProtocolError) -> ErrorReply:
        retry = error.retry_after
        return cls(
            id=error.request_id,
            code=str(error.code),
            message=error.message,
            retry_after=round(retry, 3) if retry is not None else None,
        )


# -- events ---------------------------------------------------------------------------------
# ``seq`` and ``ts`` of stored messages are declared last and optional: the server builds the
# event without them and the store adds both when it assigns them (see ``Draft``).


class MsgEvent(ServerFrame, tag="msg"):
    room: str
    from_: str = msgspec.field(name="from")
    text: str
    kind: str | None = None
    reply_to: int | None = None
    target: int | None = None
    seq: int | None = None
    ts: float | None = None


class DmEvent(ServerFrame, tag="dm"):
    from_: str = msgspec.field(name="from")
    to: str
    text: str
    kind: str | None = None
    reply_to: int | None = None
    target: int | None = None
    seq: int | None = None
    ts: float | None = None


class AnnounceEvent(ServerFrame, tag="announce"):
    from_: str = msgspec.field(name="from")
    text: str
    kind: str | None = None
    target: int | None = None
    seq: int | None = None
    ts: float | None = None


class JoinedEvent(ServerFrame, tag="joined"):
    room: str
    nick: str
    ts: float


class PartedEvent(ServerFrame, tag="parted"):
    room: str
    nick: str
    ts: float
    reason: str | None = None


class TopicEvent(ServerFrame, tag="topic"):
    room: str
    topic: str
    by: str
    ts: float


class OnlineEvent(ServerFrame, tag="online"):
    nick: str
    ts: float


class OfflineEvent(ServerFrame, tag="offline"):
    nick: str
    ts: float


class MarkerEvent(ServerFrame, tag="marker"):
    seq: int
    room: str | None = None
    with_: str | None = msgspec.field(default=None, name="with")
    announcements: bool | None = None


class TypingEvent(ServerFrame, tag="typing"):
    from_: str = msgspec.field(name="from")
    room: str | None = None
    with_: str | None = msgspec.field(default=None, name="with")


#: A message that takes a ``seq`` in its stream (what ``Draft`` carries to the store).
StoredEvent = MsgEvent | DmEvent | AnnounceEvent

Event = (
    Welcome
    | Pong
    | Ok
    | ErrorReply
    | MsgEvent
    | DmEvent
    | AnnounceEvent
    | JoinedEvent
    | PartedEvent
    | TopicEvent
    | OnlineEvent
    | OfflineEvent
    | MarkerEvent
    | TypingEvent
)

#: Every tag a server frame may carry.
EVENT_TYPES: frozenset[str] = frozenset(
    str(cls.__struct_config__.tag) for cls in typing.get_args(Event)
)

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)


def decode_event(payload: bytes) -> Event:
    """One server frame's payload as its struct; ``msgspec.DecodeError`` (or its subclass
    ``ValidationError``) for anything that is not a well-formed frame of a known type."""
    result: Event = _decoder.decode(payload)
    return result


def event_from_dict(message: dict[str, Any]) -> Event:
    """A frame a client already decoded to a dict, as its struct (same errors as above)."""
    result: Event = msgspec.convert(message, Event)
    return result


def decode_stored(payload: bytes) -> StoredEvent:
    """A stored message (a ``history`` entry); ``msgspec.ValidationError`` for anything else."""
    event = decode_event(payload)
    if not isinstance(event, MsgEvent | DmEvent | AnnounceEvent):
        raise msgspec.ValidationError(f"expected a stored message, got {type(event).__name__}")
    return event
