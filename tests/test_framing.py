"""The sans-I/O frame decoder and encoder, fed byte by byte and in arbitrary chunks."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imchat.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    encode_message,
)


def frames_of(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_encode_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 258)[:HEADER_SIZE] == b"\x00\x00\x01\x02"


def test_encode_message_is_one_framed_json_object() -> None:
    data = encode_message({"type": "say", "room": "lobby", "text": "héllo ☃"})
    length = int.from_bytes(data[:4], "big")
    assert length == len(data) - 4
    assert json.loads(data[4:].decode("utf-8")) == {
        "type": "say",
        "room": "lobby",
        "text": "héllo ☃",
    }


def test_decoder_fed_one_byte_at_a_time() -> None:
    payloads = [b'{"type":"ping"}', b"{}", b'{"type":"say","text":"' + b"x" * 300 + b'"}']
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
        # a frame comes out exactly when its last byte arrives, never earlier
        ends = [sum(len(p) + 4 for p in payloads[: k + 1]) for k in range(len(payloads))]
        assert len(got) == sum(1 for end in ends if end <= i + 1)
    assert got == payloads
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    payloads = [json.dumps({"type": "ping", "id": i}).encode() for i in range(1000)]
    decoder = FrameDecoder()
    assert list(decoder.feed(b"".join(encode_frame(p) for p in payloads))) == payloads
    assert decoder.buffered == 0


def test_partial_header_and_body_wait_for_more() -> None:
    decoder = FrameDecoder()
    assert list(decoder.feed(b"\x00\x00")) == []
    assert list(decoder.feed(b"\x00\x05ab")) == []
    assert decoder.next_frame() is None
    assert list(decoder.feed(b"cde\x00")) == [b"abcde"]
    assert decoder.buffered == 1


@st.composite
def stream_and_splits(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    payloads = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    return payloads, chunks


@settings(max_examples=300, deadline=None)
@given(stream_and_splits())
def test_any_split_yields_the_same_frames(case: tuple[list[bytes], list[bytes]]) -> None:
    payloads, chunks = case
    decoder = FrameDecoder()
    assert frames_of(decoder, chunks) == payloads
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=5),
    st.integers(51, 10_000_000),
    st.data(),
)
def test_oversized_header_fails_at_any_split(
    good: list[bytes], claimed: int, data: st.DataObject
) -> None:
    """Whatever the chunking, the good frames before it come out, then frame_too_large."""
    stream = b"".join(encode_frame(p) for p in good) + claimed.to_bytes(4, "big")
    cut = data.draw(st.integers(0, len(stream)))
    decoder = FrameDecoder(max_frame=50)
    got: list[bytes] = []
    with pytest.raises(ProtocolError) as info:
        for chunk in (stream[:cut], stream[cut:]):
            for payload in decoder.feed(chunk):
                got.append(payload)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert got == good


def test_max_frame_is_decided_on_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame=DEFAULT_MAX_FRAME)
    with pytest.raises(ProtocolError) as info:
        list(decoder.feed((10 * 1024 * 1024).to_bytes(4, "big")))  # no body at all
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert info.value.fatal
    assert decoder.buffered == 0


def test_max_frame_boundary() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert list(decoder.feed(encode_frame(b"x" * 10))) == [b"x" * 10]
    with pytest.raises(ProtocolError) as info:
        list(decoder.feed(b"\x00\x00\x00\x0b"))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_largest_header_is_refused() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        list(decoder.feed(b"\xff\xff\xff\xff"))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_empty_frame_is_bad_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        list(decoder.feed(b"\x00\x00\x00\x00"))
    assert info.value.code == ErrorCode.BAD_FRAME
    assert info.value.fatal


def test_decoder_stays_failed() -> None:
    decoder = FrameDecoder(max_frame=4)
    with pytest.raises(ProtocolError):
        list(decoder.feed(b"\x00\x00\x00\x05"))
    with pytest.raises(ProtocolError) as info:
        list(decoder.feed(encode_frame(b"ok")))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError):
        decoder.next_frame()


# -- split_frames: whole frames straight out of a read, and the server session that uses it --


def test_split_frames_appends_whole_frames_and_returns_where_the_rest_starts() -> None:
    from imchat.protocol import split_frames

    data = encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"three")[:6]
    out: list[bytes] = []
    rest = split_frames(data, DEFAULT_MAX_FRAME, out)
    assert out == [b"one", b"two"]
    assert data[rest:] == encode_frame(b"three")[:6]
    assert split_frames(memoryview(encode_frame(b"x"))[:3], DEFAULT_MAX_FRAME, out) == 0


def test_split_frames_raises_at_a_bad_header_after_the_frames_before_it() -> None:
    from imchat.protocol import split_frames

    out: list[bytes] = []
    with pytest.raises(ProtocolError) as info:
        split_frames(encode_frame(b"ok") + b"\x00\x00\x00\x00", DEFAULT_MAX_FRAME, out)
    assert info.value.code == ErrorCode.BAD_FRAME
    assert out == [b"ok"]
    with pytest.raises(ProtocolError) as info:
        split_frames((DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"), DEFAULT_MAX_FRAME, out)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def _session() -> object:
    from types import SimpleNamespace

    from imchat.server.session import Session

    hub = SimpleNamespace(
        config=SimpleNamespace(max_frame=DEFAULT_MAX_FRAME),
        loop=SimpleNamespace(time=lambda: 0.0),
    )
    session = Session(hub)  # type: ignore[arg-type]
    session._busy = True  # nothing is handled: the inbox is what is looked at
    session.user = object()  # type: ignore[assignment]  # an identified session's budget
    return session


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_the_session_splits_any_chunking_like_the_decoder(
    payloads: list[bytes], cuts: list[int]
) -> None:
    """Reads cut anywhere (inside a header too) give the frames in order, count every byte
    held, and leave no decoder once the reads end on a frame boundary."""
    from imchat.server.session import Session

    stream = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    session = _session()
    assert isinstance(session, Session)
    for start, end in itertools.pairwise(points):
        session.data_received(stream[start:end])
        assert end - HEADER_SIZE <= session.held <= end  # held until handled (bar a header)
    assert session._inbox == payloads
    assert session.decoder is None
    assert session.held == len(stream)


def test_the_session_keeps_its_decoder_while_a_frame_is_half_read() -> None:
    from imchat.server.session import Session

    session = _session()
    assert isinstance(session, Session)
    frame = encode_frame(b"hello")
    session.data_received(frame[:2])
    session.data_received(frame[2:HEADER_SIZE])  # the header complete, taken in: no byte left
    assert session.decoder is not None and session.decoder.partial
    session.data_received(frame[HEADER_SIZE:] + frame[:2])
    assert session._inbox == [b"hello"]
    assert session.decoder is not None  # the next header is half in
    session.data_received(frame[2:])
    assert session._inbox == [b"hello", b"hello"]
    assert session.decoder is None


def test_the_session_stays_failed_after_a_bad_header() -> None:
    from imchat.server.session import Session

    session = _session()
    assert isinstance(session, Session)
    session.data_received(encode_frame(b"ok") + b"\x00\x00\x00\x00")
    inbox = session._inbox
    assert inbox is not None and inbox[0] == b"ok"
    assert isinstance(inbox[1], ProtocolError) and inbox[1].code == ErrorCode.BAD_FRAME
    assert session.decoder is not None and session.decoder.failed
    assert session.held == len(encode_frame(b"ok"))
