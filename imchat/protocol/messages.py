"""Typed client requests and the single function that turns a payload into one.

:func:`parse_request` is where a malformed request becomes its error code: ``bad_frame`` for
bytes that are not a UTF-8 JSON object, ``bad_request`` for a missing or mistyped field,
``unknown_type``, and the domain codes (``bad_nick``, ``bad_room``, ``bad_text``) raised by each
request's ``validate``. The server never re-checks a field it gets from here.

The same structs encode requests on the client side (the ``type`` tag is added by msgspec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from .depth import MAX_DEPTH, exceeds_depth
from .errors import ErrorCode, ProtocolError, RequestId
from .names import check_nick, check_text, known_room, normalize_room

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 64
MAX_CID_LENGTH = 64
#: A guest identity's ``resume`` secret is at most this long (*rev 2*).
MAX_RESUME_LENGTH = 64
DEFAULT_MAX_TEXT = 4000
DEFAULT_MAX_TOPIC = 500
#: Rooms per ``rooms`` reply: the default and the most (*rev 2*).
MAX_ROOMS_LIMIT = 500
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500
DEFAULT_SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 100
MAX_EMOJI = 16
_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class Limits:
    """The server-announced bounds that validation depends on."""

    max_text: int = DEFAULT_MAX_TEXT
    max_topic: int = DEFAULT_MAX_TOPIC


class Request(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of every client request. ``id`` is echoed in the reply."""

    id: str | int | None = None
    #: Allowed before ``hello`` succeeds.
    before_hello: ClassVar[bool] = False

    def validate(self, limits: Limits) -> None:
        """Check domain rules (names, text); may normalise fields in place."""


def _check_cid(cid: str | None) -> None:
    if cid is not None and not 1 <= len(cid) <= MAX_CID_LENGTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "cid must be a string of 1-64 characters")


def _check_seq(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value < _INT64:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be a seq >= 0")


class Hello(Request, tag="hello"):
    proto: int
    nick: str
    password: str | None = None
    token: str | None = None
    client: str | None = None
    #: The secret a guest identity's ``welcome`` carried: continues that identity (*rev 2*).
    resume: str | None = None
    before_hello: ClassVar[bool] = True

    def validate(self, limits: Limits) -> None:
        if self.proto != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unsupported protocol {self.proto}")
        if self.resume is not None and not 1 <= len(self.resume) <= MAX_RESUME_LENGTH:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "resume must be 1-64 characters")
        check_nick(self.nick)


class Ping(Request, tag="ping"):
    before_hello: ClassVar[bool] = True


class Bye(Request, tag="bye"):
    before_hello: ClassVar[bool] = True


class Join(Request, tag="join"):
    room: str

    def validate(self, limits: Limits) -> None:
        self.room = normalize_room(self.room)


class Part(Join, tag="part"):
    pass


class Say(Request, tag="say"):
    room: str
    text: str
    kind: str | None = None
    cid: str | None = None
    #: Revision 3: the seq of the message (of the same room) this one answers.
    reply_to: int | None = None

    def validate(self, limits: Limits) -> None:
        # The checks of optional fields only for fields present: most says have none.
        if self.kind is not None and self.kind != "action":
            raise ProtocolError(ErrorCode.BAD_REQUEST, "kind must be 'action'")
        if self.cid is not None:
            _check_cid(self.cid)
        if self.reply_to is not None:
            _check_seq("reply_to", self.reply_to)
        self.room = normalize_room(self.room)
        check_text(self.text, limits.max_text)


class Topic(Request, tag="topic"):
    room: str
    text: str

    def validate(self, limits: Limits) -> None:
        self.room = normalize_room(self.room)
        # May be empty (clears the topic); at most max_topic, so no room list can outgrow
        # what clients accept.
        check_text(self.text, min(limits.max_text, limits.max_topic), allow_empty=True)


class Rooms(Request, tag="rooms"):
    """One page of the room list: the rooms named after ``after``, at most ``limit``."""

    after: str | None = None
    limit: int | None = None

    def validate(self, limits: Limits) -> None:
        if self.limit is not None and self.limit < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be at least 1")
        if self.after is not None:
            if len(self.after) > 65:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "after must be a room name")
            self.after = self.after.removeprefix("#").lower()

    @property
    def effective_limit(self) -> int:
        return MAX_ROOMS_LIMIT if self.limit is None else min(self.limit, MAX_ROOMS_LIMIT)


class Users(Request, tag="users"):
    pass


class Dm(Request, tag="dm"):
    to: str
    text: str
    cid: str | None = None
    #: Revision 3: the seq of the message (of the same DM stream) this one answers.
    reply_to: int | None = None

    def validate(self, limits: Limits) -> None:
        _check_cid(self.cid)
        _check_seq("reply_to", self.reply_to)
        check_nick(self.to)
        check_text(self.text, limits.max_text)


class Announce(Request, tag="announce"):
    text: str
    cid: str | None = None

    def validate(self, limits: Limits) -> None:
        _check_cid(self.cid)
        check_text(self.text, limits.max_text)


class History(Request, tag="history"):
    room: str | None = None
    with_: str | None = msgspec.field(default=None, name="with")
    announcements: bool = False
    after: int | None = None
    before: int | None = None
    limit: int | None = None

    def validate(self, limits: Limits) -> None:
        anchors = (self.room is not None) + (self.with_ is not None) + self.announcements
        if anchors != 1:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "history needs exactly one of room, with, announcements"
            )
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < _INT64:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be a seq >= 0")
        if self.limit is not None and self.limit < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be at least 1")
        if self.room is not None:
            self.room = normalize_room(self.room)
        if self.with_ is not None:
            check_nick(self.with_)

    @property
    def effective_limit(self) -> int:
        if self.limit is None:
            return DEFAULT_HISTORY_LIMIT
        return min(self.limit, MAX_HISTORY_LIMIT)


# -- revision 3: message features ------------------------------------------------------------


class StreamRequest(Request, kw_only=True):
    """A request about exactly one stream: a room, the DM stream ``with`` a user, or the
    announcements. Subclasses say whether naming none is allowed (``search``)."""

    room: str | None = None
    with_: str | None = msgspec.field(default=None, name="with")
    announcements: bool = False
    #: ``search`` may name no stream (then it covers every readable one).
    stream_optional: ClassVar[bool] = False

    def validate(self, limits: Limits) -> None:
        named = (self.room is not None) + (self.with_ is not None) + self.announcements
        if named > 1 or (named == 0 and not self.stream_optional):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{self.tag()} needs exactly one of room, with, announcements",
            )
        if self.room is not None:
            self.room = normalize_room(self.room)
        if self.with_ is not None:
            check_nick(self.with_)

    @classmethod
    def tag(cls) -> str:
        return str(cls.__struct_config__.tag)

    @property
    def names_stream(self) -> bool:
        return self.room is not None or self.with_ is not None or self.announcements


class _TargetRequest(StreamRequest, kw_only=True):
    """A request about one stored message (``seq``) of a stream; may carry a ``cid``."""

    seq: int
    cid: str | None = None

    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        _check_cid(self.cid)
        _check_seq("seq", self.seq)


class Edit(_TargetRequest, tag="edit", kw_only=True):
    text: str

    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        check_text(self.text, limits.max_text)


class Delete(_TargetRequest, tag="delete"):
    pass


class React(_TargetRequest, tag="react", kw_only=True):
    emoji: str
    remove: bool = False

    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        check_text(self.emoji, MAX_EMOJI)


class Mark(StreamRequest, tag="mark", kw_only=True):
    seq: int

    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        _check_seq("seq", self.seq)


class Markers(Request, tag="markers"):
    pass


class Typing(StreamRequest, tag="typing"):
    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        if self.announcements:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "typing is for rooms and DMs only")


class Search(StreamRequest, tag="search", kw_only=True):
    text: str
    limit: int | None = None
    #: A ``ts``: only messages strictly older are found (paging back).
    before: float | None = None
    stream_optional: ClassVar[bool] = True

    def validate(self, limits: Limits) -> None:
        super().validate(limits)
        check_text(self.text, limits.max_text)
        if not self.text.split():
            raise ProtocolError(ErrorCode.BAD_TEXT, "search text holds no term")
        if self.limit is not None and self.limit < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be at least 1")
        if self.before is not None and not math.isfinite(self.before):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "before must be a finite ts")

    @property
    def terms(self) -> list[str]:
        return self.text.split()

    @property
    def effective_limit(self) -> int:
        if self.limit is None:
            return DEFAULT_SEARCH_LIMIT
        return min(self.limit, MAX_SEARCH_LIMIT)


FEATURE_REQUESTS: tuple[type[Request], ...] = (
    Edit,
    Delete,
    React,
    Mark,
    Markers,
    Typing,
    Search,
)


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (Hello, Ping, Bye, Join, Part, Say, Topic, Rooms, Users, Dm, Announce, History)
}
REQUEST_TYPES.update({cls.__struct_config__.tag: cls for cls in FEATURE_REQUESTS})  # type: ignore[misc]

_decoder = msgspec.json.Decoder()
_MISSING: Any = object()


def decode_object(payload: bytes) -> dict[str, Any]:
    """JSON bytes to a dict, or the fatal ``bad_frame``.

    Nesting deeper than :data:`MAX_DEPTH` is ``bad_frame`` before the decoder sees it (it
    would recurse into ``RecursionError``). A number too large for 64 bits is valid JSON the
    protocol has no use for: ``bad_request``, which keeps the connection (framing is intact).
    """
    if exceeds_depth(payload):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        obj = _decoder.decode(payload)
    except msgspec.ValidationError:
        # The only type rule of an untyped decode: numbers must fit (ints in 64 bits).
        raise ProtocolError(ErrorCode.BAD_REQUEST, "number out of range") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not a JSON object")
    return obj


def _request_id(obj: dict[str, Any]) -> RequestId | None:
    rid = obj.get("id", _MISSING)
    if rid is _MISSING:
        return None
    if isinstance(rid, str) and len(rid) <= MAX_ID_LENGTH:
        return rid
    if type(rid) is int and -_INT64 <= rid < _INT64:
        return rid
    raise ProtocolError(ErrorCode.BAD_REQUEST, "id must be an integer or a string of <= 64 chars")


class _SayFrame(msgspec.Struct, tag="say", tag_field="type", forbid_unknown_fields=True):
    """A ``say`` exactly as a well-behaved client sends it: the known fields, no null.

    Decoded straight into its fields, without the dict, the null checks and ``convert`` of the
    generic path: ``say`` is most of what a server parses. Anything else (an unknown field,
    a null, a wrong type, an id out of range, another key order) is not an error here, only
    a reason to take the generic path, which says what is wrong, so both give the same
    answer for every frame.
    """

    room: str
    text: str
    kind: str | msgspec.UnsetType = msgspec.UNSET
    cid: str | msgspec.UnsetType = msgspec.UNSET
    reply_to: int | msgspec.UnsetType = msgspec.UNSET
    id: str | int | msgspec.UnsetType = msgspec.UNSET


_say_decoder = msgspec.json.Decoder(_SayFrame)
_UNSET = msgspec.UNSET
#: How msgspec (this package's encoder, so every imchat client) starts a ``say``.
_SAY_PREFIX = b'{"type":"say",'


def _decode_say(payload: bytes) -> Say | None:
    """The common ``say``, or None: the generic path decides (see :class:`_SayFrame`)."""
    if not payload.startswith(_SAY_PREFIX):
        return None
    try:
        frame = _say_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # ValidationError too
        return None
    return _typed_say(frame)


def _typed_say(frame: _SayFrame) -> Say | None:
    """The ``Say`` of a decoded frame, not yet validated; None: the generic path decides."""
    # Only the fields the frame has are passed on: the struct fills in the others' None
    # (four calls to turn UNSET into None cost more than the decode).
    say = Say(room=frame.room, text=frame.text)
    rid = frame.id
    if rid is not _UNSET:
        if isinstance(rid, str):
            if len(rid) > MAX_ID_LENGTH:
                return None
        elif not -_INT64 <= rid < _INT64:
            return None
        say.id = rid
    if frame.kind is not _UNSET:
        say.kind = frame.kind
    if frame.cid is not _UNSET:
        say.cid = frame.cid
    if frame.reply_to is not _UNSET:
        say.reply_to = frame.reply_to
    return say


#: Bytes that a say's text can hold only if it may be refused as ``bad_text``: a JSON escape
#: (``\\``: every C0 control reaches a decoded string through one, a raw one is not JSON),
#: DEL raw, and the first byte of a raw C1 control in UTF-8 (U+0080-U+009F: C2 80-C2 9F).
#: Integers: ``int in bytes`` is a ``memchr``; a one-byte ``bytes`` needle first fails as an
#: integer (a ``TypeError`` made and dropped: ~1,800 instructions each).
_ESCAPE, _DEL, _C1 = 0x5C, 0x7F, 0xC2


def _plain_say(frame: _SayFrame, payload: bytes, limits: Limits) -> Say | None:
    """The ``Say`` of a decoded frame, validated, if it is a plain one (nearly every say: a
    room name seen before, text without a control character, no ``kind`` or ``reply_to``):
    what :func:`_typed_say` and ``Say.validate`` would make of it, in one call instead of
    four. None for any other frame: those two decide."""
    room = known_room(frame.room)
    text = frame.text
    cid = frame.cid
    if (
        room is None
        or frame.kind is not _UNSET
        or frame.reply_to is not _UNSET
        or not text
        or len(text) > limits.max_text
        or (cid is not _UNSET and not 1 <= len(cid) <= MAX_CID_LENGTH)
    ):
        return None
    # Three scans of the bytes for one byte each (memchr) instead of ``isprintable`` over
    # the text (a table lookup per character); only a frame with one of them asks that.
    if (_ESCAPE in payload or _DEL in payload or _C1 in payload) and not text.isprintable():
        return None
    rid = frame.id
    if rid is _UNSET:
        return Say(room=room, text=text, cid=None if cid is _UNSET else cid)
    if isinstance(rid, str):
        if len(rid) > MAX_ID_LENGTH:
            return None
    elif not -_INT64 <= rid < _INT64:
        return None
    return Say(room=room, text=text, cid=None if cid is _UNSET else cid, id=rid)


def parse_request(payload: bytes, limits: Limits) -> Request:
    """Decode and validate one client frame; every fault raises :class:`ProtocolError`."""
    request: Request | None = None
    if payload.startswith(_SAY_PREFIX):
        try:
            frame = _say_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # ValidationError too
            pass
        else:
            request = _plain_say(frame, payload, limits)
            if request is not None:
                return request  # checked as validate would: nothing to do
            request = _typed_say(frame)
    if request is None:
        request = _decode_request(payload)
    try:
        request.validate(limits)
    except ProtocolError as exc:
        raise exc.with_id(request.id) from None
    return request


def _decode_request(payload: bytes) -> Request:
    """Any request, through a dict: the reference every fast path must agree with."""
    obj = decode_object(payload)
    rid = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'type'", request_id=rid)
    cls = REQUEST_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:40]!r}", request_id=rid)
    for name in cls.__struct_encode_fields__:
        # Optional fields default to None, but an explicit null is a value of the wrong type.
        if name in obj and obj[name] is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must not be null", request_id=rid)
    try:
        return msgspec.convert(obj, cls)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), request_id=rid) from None
