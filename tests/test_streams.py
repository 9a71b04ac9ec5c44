"""StreamId: the typed stream and the stored key form existing data depends on."""

from __future__ import annotations

import pytest

from imchat.server import streams
from imchat.server.redis_typed import blob, blobs, text, texts
from imchat.server.streams import StreamId, StreamKind


def test_keys_keep_the_stored_form() -> None:
    assert StreamId.room("lobby").key == "r:lobby"
    assert StreamId.dm("bob", "amy").key == "d:amy bob" == StreamId.dm("amy", "bob").key
    assert StreamId.dm("amy", "amy").key == "d:amy amy"
    assert StreamId.announcements().key == "a"


def test_accessors_replace_slicing() -> None:
    room, pair, news = StreamId.room("dev.ops"), StreamId.dm("z", "a"), StreamId.announcements()
    assert (room.kind, room.room_name, room.dm_keys) == (StreamKind.ROOM, "dev.ops", None)
    assert (pair.kind, pair.room_name, pair.dm_keys) == (StreamKind.DM, None, ("a", "z"))
    assert (news.kind, news.room_name, news.dm_keys) == (StreamKind.ANNOUNCEMENTS, None, None)


@pytest.mark.parametrize("key", ["r:lobby", "d:amy bob", "d:a[b] c\\d", "a"])
def test_parse_round_trips(key: str) -> None:
    stream = StreamId.parse(key)
    assert stream.key == key and str(stream) == key
    assert stream == StreamId(key) and hash(stream) == hash(StreamId(key))


@pytest.mark.parametrize("key", ["", "r:", "x:lobby", "d:amy", "d:bob amy", "d:a b c", "ab"])
def test_parse_refuses_other_strings(key: str) -> None:
    with pytest.raises(ValueError):
        StreamId.parse(key)


def test_redis_replies_are_read_as_bytes() -> None:
    assert blob(b"x") == b"x" and blob("x") == b"x"
    assert text(None) == "" and text(b"\xc3\xa9") == "é"
    assert blobs({b"a"}) == [b"a"] and texts([b"a", "b"]) == ["a", "b"]
    with pytest.raises(TypeError):
        blob(1)
    with pytest.raises(TypeError):
        blobs(3)


def test_room_streams_are_made_once_and_bounded() -> None:
    """``ROOM_STREAMS[name]`` is ``StreamId.room(name)``, the same object each time, and
    starts again empty past its size (no name is kept for ever)."""
    streams.ROOM_STREAMS.clear()
    first = streams.ROOM_STREAMS["lobby"]
    assert first == StreamId.room("lobby") and first.key == "r:lobby"
    assert streams.ROOM_STREAMS["lobby"] is first
    for i in range(streams.ROOM_STREAMS_SIZE + 5):
        assert streams.ROOM_STREAMS[f"r{i}"] == StreamId.room(f"r{i}")
    assert len(streams.ROOM_STREAMS) <= streams.ROOM_STREAMS_SIZE
