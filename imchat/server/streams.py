"""Stream ids: which sequence a stored message belongs to (a room, a DM pair, announcements).

Stores key messages, seqs and pending DMs by :attr:`StreamId.key`, a string whose form is
fixed by data already on disk and in Redis (and read by the Redis Lua scripts): ``r:<room>``,
``d:<low key> <high key>`` (the two users' nick keys, sorted) and ``a``. Code outside the stores
uses the typed accessors instead of slicing that string.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class StreamKind(StrEnum):
    ROOM = "r"
    DM = "d"
    ANNOUNCEMENTS = "a"


class StreamId(msgspec.Struct, frozen=True):
    """A stream, compared and hashed by its stored key.

    A frozen struct, not a frozen dataclass: a room message makes one, and the dataclass's
    ``__init__`` (``object.__setattr__``) cost ~3,500 instructions of the say path.
    """

    key: str

    @classmethod
    def room(cls, name: str) -> StreamId:
        return cls(f"r:{name}")

    @classmethod
    def dm(cls, a_key: str, b_key: str) -> StreamId:
        """The DM stream of two users (in either order; the same user twice is allowed)."""
        low, high = sorted((a_key, b_key))
        return cls(f"d:{low} {high}")

    @classmethod
    def announcements(cls) -> StreamId:
        return ANNOUNCEMENTS

    @classmethod
    def parse(cls, key: str) -> StreamId:
        """A stream from its stored key; ``ValueError`` if the key has none of the forms."""
        stream = cls(key)
        if key == "a":
            return stream
        if key.startswith("r:") and len(key) > 2:
            return stream
        if key.startswith("d:"):
            parts = key[2:].split(" ")
            if len(parts) == 2 and all(parts) and parts[0] <= parts[1]:
                return stream
        raise ValueError(f"not a stream key: {key!r}")

    @property
    def kind(self) -> StreamKind:
        return StreamKind(self.key[0])

    @property
    def room_name(self) -> str | None:
        """The room of a room stream, else None."""
        return self.key[2:] if self.key.startswith("r:") else None

    @property
    def dm_keys(self) -> tuple[str, str] | None:
        """The two users' nick keys (sorted) of a DM stream, else None."""
        if not self.key.startswith("d:"):
            return None
        low, high = self.key[2:].split(" ")
        return low, high

    def __str__(self) -> str:
        return self.key


ANNOUNCEMENTS = StreamId("a")

#: Room streams made at most before :data:`ROOM_STREAMS` starts again empty.
ROOM_STREAMS_SIZE = 1024


class _RoomStreams(dict[str, StreamId]):
    """``StreamId.room(name)`` by room name, made once: ``ROOM_STREAMS[name]`` is a dict
    lookup (C) where the classmethod is a Python call and a struct per message."""

    def __missing__(self, name: str) -> StreamId:
        if len(self) >= ROOM_STREAMS_SIZE:
            self.clear()
        stream = self[name] = StreamId.room(name)
        return stream


ROOM_STREAMS: dict[str, StreamId] = _RoomStreams()
