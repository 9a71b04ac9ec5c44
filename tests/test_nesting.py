"""Deep nesting and huge numbers: refused with the contract's codes, never a RecursionError.

Unit tests feed the sans-I/O decoder and ``parse_request`` byte by byte; the server tests use
raw sockets and check that nothing reaches the log as a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import Clients

from imchat.protocol import (
    ErrorCode,
    FrameDecoder,
    Limits,
    ProtocolError,
    encode_frame,
    encode_message,
    parse_request,
)
from imchat.protocol.depth import MAX_DEPTH, exceeds_depth


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """A ping whose extra field nests objects so that the whole frame is ``depth`` deep."""
    return b'{"type":"ping","x":' + b'{"a":' * (depth - 1) + inner + b"}" * depth


def parse_fed_byte_by_byte(payload: bytes) -> Any:
    decoder = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    for byte in encode_frame(payload):
        frames.extend(decoder.feed(bytes([byte])))
    assert frames == [payload]
    return parse_request(frames[0], Limits())


def test_depth_counts_the_outer_object_as_level_one() -> None:
    assert not exceeds_depth(nested(MAX_DEPTH))
    assert exceeds_depth(nested(MAX_DEPTH + 1))
    assert not exceeds_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert exceeds_depth(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


def test_brackets_inside_strings_do_not_nest() -> None:
    text = b'"' + b"[{" * 500 + b'\\"[[[\\\\' + b'"'
    assert not exceeds_depth(b'{"type":"ping","x":' + text + b"}")
    # An escaped quote does not end the string; an escaped backslash before a quote does.
    assert not exceeds_depth(b'{"x":"\\"' + b"[" * 100 + b'"}')
    assert exceeds_depth(b'{"x":"\\\\",' + b'"y":' + b"[" * 40 + b"]" * 40 + b"}")


def test_pathological_escapes_are_scanned_in_linear_time() -> None:
    # A pattern matching strings with escapes inside them restarts at every quote here.
    assert exceeds_depth(b'"\\' * 30000 + b"[" * 40)


def test_depth_32_is_accepted_byte_by_byte() -> None:
    request = parse_fed_byte_by_byte(nested(MAX_DEPTH))
    assert request.__struct_config__.tag == "ping"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deeper_is_bad_frame_without_recursion_error(depth: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_fed_byte_by_byte(nested(depth))
    assert info.value.code == ErrorCode.BAD_FRAME
    assert info.value.fatal


@pytest.mark.parametrize("digits", [20, 5000])
def test_huge_integer_id_is_bad_request_without_id(digits: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_fed_byte_by_byte(b'{"type":"ping","id":' + b"9" * digits + b"}")
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert info.value.request_id is None
    assert not info.value.fatal


def test_huge_integer_elsewhere_is_bad_request() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_fed_byte_by_byte(b'{"type":"history","room":"a","after":' + b"7" * 5000 + b"}")
    assert info.value.code == ErrorCode.BAD_REQUEST


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000])
async def test_server_closes_deep_frames_with_bad_frame(
    server: Any, connect: Clients, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    raw = await connect.raw()
    await raw.hello("deep")
    raw.send_bytes(encode_frame(nested(depth)) + encode_message({"type": "ping", "id": 2}))
    frames = [f for f in await raw.recv_until_eof() if f["type"] not in ("online", "offline")]
    assert [(f["type"], f["code"], "id" in f) for f in frames] == [("error", "bad_frame", False)]
    assert _tracebacks(caplog) == []


async def test_server_answers_depth_32(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send_bytes(encode_frame(nested(MAX_DEPTH)[:-1] + b',"id":1}'))
    assert await raw.recv() == {"type": "pong", "id": 1}


async def test_server_answers_huge_id_bad_request_and_keeps_the_connection(
    server: Any, connect: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await connect.raw()
    raw.send_json(b'{"type":"ping","id":' + b"1" * 5000 + b"}")
    error = await raw.recv()
    assert error == {"type": "error", "code": "bad_request", "message": error["message"]}
    assert await raw.request({"type": "ping", "id": "after"}) == {"type": "pong", "id": "after"}
    assert _tracebacks(caplog) == []
