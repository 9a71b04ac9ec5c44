"""Validation of nicks, room names and message text, exactly as the contract defines them."""

from __future__ import annotations

import re

from .errors import ErrorCode, ProtocolError

_NICK = re.compile(r"[A-Za-z_\[\]\\^{}|`][A-Za-z0-9_\-\[\]\\^{}|`]{0,31}")
_ROOM = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
# C0 controls except tab and newline, DEL, and C1 controls.
_FORBIDDEN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def is_valid_nick(nick: str) -> bool:
    return _NICK.fullmatch(nick) is not None


def check_nick(nick: str) -> str:
    if not is_valid_nick(nick):
        raise ProtocolError(ErrorCode.BAD_NICK, f"invalid nick {nick[:40]!r}")
    return nick


def nick_key(nick: str) -> str:
    """The case-insensitive identity of a nick (ASCII only, so ``lower()`` is exact)."""
    return nick.lower()


#: Room names as requests spelled them, each with its normalised name: nearly every request
#: names one of a few rooms, and checking one (a regular expression) cost ~4,000
#: instructions of every ``say``. Only valid names are kept, at most :data:`ROOM_CACHE_SIZE`
#: (then it starts again empty; a room name is at most 65 characters).
_rooms: dict[str, str] = {}
ROOM_CACHE_SIZE = 1024
#: The normalised name of a room name :func:`normalize_room` found valid before, or None:
#: its cache, read without a Python call (the dict is cleared, never replaced).
known_room = _rooms.get


def normalize_room(room: str) -> str:
    """Strip one leading ``#`` and lower-case; raise ``bad_room`` if the result is invalid."""
    name = _rooms.get(room)
    if name is not None:
        return name
    name = room[1:] if room.startswith("#") else room
    # Checked before lower-casing: the Kelvin sign lower-cases to an ASCII "k".
    if not name.isascii() or _ROOM.fullmatch(name.lower()) is None:
        raise ProtocolError(ErrorCode.BAD_ROOM, f"invalid room name {room[:70]!r}")
    name = name.lower()
    if len(_rooms) >= ROOM_CACHE_SIZE:
        _rooms.clear()
    _rooms[room] = name
    return name


def check_text(text: str, max_text: int, *, allow_empty: bool = False) -> str:
    if not text and not allow_empty:
        raise ProtocolError(ErrorCode.BAD_TEXT, "text is empty")
    if len(text) > max_text:
        raise ProtocolError(ErrorCode.BAD_TEXT, f"text is longer than {max_text} characters")
    # isprintable() (C, a table lookup per character) is False for every forbidden
    # character (all are category Cc); the regular expression decides only the rest.
    if not text.isprintable() and _FORBIDDEN_TEXT.search(text):
        raise ProtocolError(ErrorCode.BAD_TEXT, "text contains control characters")
    return text
