"""The typed ``say`` decoder gives the generic path's answer for every frame.

``parse_request`` decodes a well-formed ``say`` straight into its fields and leaves every
other frame to the generic path (dict, null checks, ``convert``). Whatever the frame, the
outcome (the request, or the error's code, message and id) must be the generic path's.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imchat.protocol import Limits, ProtocolError, Say, parse_request
from imchat.protocol import messages as m

LIMITS = Limits(max_text=50)


def outcome(parse: Any, payload: bytes) -> tuple[Any, ...]:
    try:
        request = parse(payload)
    except ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)
    return ("ok", type(request), msgspec.structs.asdict(request))


def generic(payload: bytes) -> Any:
    request = m._decode_request(payload)
    try:
        request.validate(LIMITS)
    except ProtocolError as exc:
        raise exc.with_id(request.id) from None
    return request


VALUES = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["lobby", "#Lobby", "action", "c1", "", "a" * 65, "say", "ping"]),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64]),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
    st.just([1, [2]]),
    st.just({"a": None}),
)
KEYS = st.sampled_from(["room", "text", "kind", "cid", "reply_to", "id", "type", "x", "with"])


def frame(pairs: list[tuple[str, Any]], raw_tail: bytes = b"") -> bytes:
    body = b",".join(msgspec.json.encode(k) + b":" + msgspec.json.encode(v) for k, v in pairs)
    return b"{" + body + raw_tail + b"}"


@settings(max_examples=600, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {"room": st.sampled_from(["lobby", "#Lobby", "bad room"]), "text": st.text(max_size=60)}
    ),
    extra=st.lists(st.tuples(KEYS, VALUES), max_size=4),
    first=st.booleans(),
    tail=st.sampled_from([b"", b',"big":1e999', b',"deep":[[[]]]', b',"n":null']),
)
def test_every_say_like_frame_gets_the_generic_answer(
    base: dict[str, Any], extra: list[tuple[str, Any]], first: bool, tail: bytes
) -> None:
    pairs: list[tuple[str, Any]] = list(base.items()) + extra
    pairs = [("type", "say"), *pairs] if first else [*pairs, ("type", "say")]
    payload = frame(pairs, tail)
    assert outcome(lambda p: parse_request(p, LIMITS), payload) == outcome(generic, payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"say","room":"a","text":"hi","id":18446744073709551615}',
        b'{"type":"say","room":"a","text":"hi","id":"' + b"i" * 65 + b'"}',
        b'{"type":"say","type":"ping","room":"a","text":"hi"}',
        b'{"type":"say","room":"a","text":"hi","kind":null}',
        b'{"type":"say","room":"a","text":"hi","x":1e999}',
        b'{"type":"say","room":"a","text":"hi","room":"b"}',
        b'{"type":"say","room":"a","text":"\xff"}',
        b'{"type":"say","room":"a","text":"hi","id":true}',
        b'{"type":"say","room":"Bad Room","text":"hi","id":7}',
        b'{"type":"say","room":"a","text":"\\u0007","id":"x"}',
        b'{"type":"say",' + b"[" * 40 + b"]" * 40 + b"}",
        # Text a plain say's byte scan must hand to isprintable (and check_text): DEL and a
        # C1 control raw, controls escaped, and allowed escapes (newline, tab, a quote).
        b'{"type":"say","room":"lobby","text":"a\x7fb","id":1}',
        b'{"type":"say","room":"lobby","text":"a\xc2\x85b","id":1}',
        b'{"type":"say","room":"lobby","text":"a\xc2\xa0b","id":1}',
        b'{"type":"say","room":"lobby","text":"a\\u0085b","id":1}',
        b'{"type":"say","room":"lobby","text":"a\\u001bb","id":1}',
        b'{"type":"say","room":"lobby","text":"a\\nb\\tc\\"d","id":1}',
        b'{"type":"say","room":"lobby","text":"hi","cid":""}',
        b'{"type":"say","room":"lobby","text":"hi","cid":"' + b"c" * 65 + b'"}',
        b'{"type":"say","room":"lobby","text":"' + b"t" * 51 + b'"}',
        b'{"type":"say","room":"lobby","text":""}',
    ],
)
def test_odd_says_get_the_generic_answer(payload: bytes) -> None:
    assert outcome(lambda p: parse_request(p, LIMITS), payload) == outcome(generic, payload)


def test_a_plain_say_takes_the_typed_path() -> None:
    """The fast path is used (else this file tests nothing): a msgspec-encoded say."""
    payload = msgspec.json.encode(Say(room="#Lobby", text="hi", cid="c", id=3))
    say = m._decode_say(payload)
    assert say == Say(room="#Lobby", text="hi", cid="c", id=3)
    assert parse_request(payload, LIMITS) == Say(room="lobby", text="hi", cid="c", id=3)


def test_a_plain_say_is_validated_in_one_call() -> None:
    """A plain say (its room name seen before, no control character) is decoded and
    validated by ``_plain_say`` alone (the file's other tests hold its answers to the
    generic path's)."""
    payload = msgspec.json.encode(Say(room="#Lobby", text="hi there", cid="c", id=3))
    parse_request(payload, LIMITS)  # the room name is now known
    frame = m._say_decoder.decode(payload)
    assert m._plain_say(frame, payload, LIMITS) == Say(room="lobby", text="hi there", cid="c", id=3)
    assert parse_request(payload, LIMITS) == Say(room="lobby", text="hi there", cid="c", id=3)
    # Text with a newline is valid but not plain: it takes the typed path and validate.
    newline = msgspec.json.encode(Say(room="lobby", text="a\nb"))
    assert m._plain_say(m._say_decoder.decode(newline), newline, LIMITS) is None
    assert parse_request(newline, LIMITS) == Say(room="lobby", text="a\nb")
