"""The sans-I/O IRC line layer and the translation of native events, without a server."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imchat.protocol import encode_message
from imchat.server.irc import translate as tr
from imchat.server.irc.lines import (
    MAX_LINE,
    MAX_TOTAL,
    BadLine,
    Line,
    LineDecoder,
    LineTooLong,
    format_line,
    format_parts,
    inert,
    parse_line,
    split_text,
)


def test_parse_full_line() -> None:
    line = parse_line(
        b"@time=2026-01-01T00:00:00.000Z;msgid=7;+x=a\\sb :nick!u@h PRIVMSG #r :hi there"
    )
    assert line.tags == {"time": "2026-01-01T00:00:00.000Z", "msgid": "7", "+x": "a b"}
    assert line.source == "nick!u@h"
    assert line.command == "PRIVMSG"
    assert line.params == ["#r", "hi there"]


@pytest.mark.parametrize(
    ("raw", "params"),
    [
        (b"USER u 0 * :Real Name", ["u", "0", "*", "Real Name"]),
        (b"privmsg #a :", ["#a", ""]),
        (b"PRIVMSG #a ::)", ["#a", ":)"]),
        (b"JOIN   #a", ["#a"]),
        (b"PING", []),
    ],
)
def test_parse_params(raw: bytes, params: list[str]) -> None:
    assert parse_line(raw).params == params


def test_refuses_invalid_utf8_nul_and_empty() -> None:
    with pytest.raises(BadLine) as exc:
        parse_line(b"PRIVMSG #a :\xc3(")
    assert exc.value.code == "INVALID_UTF8"
    with pytest.raises(BadLine):
        parse_line(b"PRIVMSG #a :a\0b")
    with pytest.raises(BadLine):
        parse_line(b"@a=b ")


def test_body_over_512_bytes_is_too_long_but_tags_may_be_long() -> None:
    body = b"PRIVMSG #a :" + b"x" * (MAX_LINE - 2 - 12)
    assert parse_line(body).params[1].startswith("x")
    with pytest.raises(LineTooLong):
        parse_line(body + b"x")
    tagged = b"@+t=" + b"v" * 4000 + b" " + body
    assert parse_line(tagged).tags["+t"] == "v" * 4000


def test_round_trip_with_escaped_tags() -> None:
    line = Line("PRIVMSG", ["#r", "a: b"], "n!u@h", {"+x": "semi;colon space\\back"})
    raw = format_line(line)
    assert raw.endswith(b"\r\n")
    assert parse_line(raw[:-2]) == line


def test_decoder_byte_by_byte() -> None:
    decoder = LineDecoder()
    data = b"NICK a\r\nUSER a 0 * :A\nPING x\r\n"
    out: list[bytes | LineTooLong] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [b"NICK a", b"USER a 0 * :A", b"PING x"]
    assert decoder.buffered == 0


def test_decoder_bounds_a_line_without_end() -> None:
    decoder = LineDecoder()
    out = list(decoder.feed(b"PRIVMSG #a :" + b"y" * (MAX_TOTAL + 10)))
    assert len(out) == 1 and isinstance(out[0], LineTooLong)
    assert decoder.buffered == 0
    # the rest of that line is skipped; the next line is read normally
    assert list(decoder.feed(b"yyyy\r\nPING z\r\n")) == [b"PING z"]


@given(st.text(min_size=1, max_size=3000))
def test_split_text_fits_and_keeps_every_character(text: str) -> None:
    pieces = split_text(text, 100)
    assert all(len(p.encode()) <= 100 for p in pieces)
    joined = "".join(pieces).replace(" ", "")
    assert joined == text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(
    "unit",
    [
        "\U0001f1fa\U0001f1f8",  # a flag: two regional indicators
        "e\u0301",  # a letter and its combining accent
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family: emoji joined by ZWJ
        "\U0001f44d\U0001f3fd",  # thumbs up with a skin tone
        "\u2764\ufe0f",  # a heart with its emoji variation selector
        "\u0915\u094d\u0937",  # Devanagari conjunct (virama)
    ],
)
def test_split_text_keeps_what_is_drawn_as_one_character_whole(unit: str) -> None:
    """A long text without spaces is cut between what is drawn as one character, never
    inside it: a flag cut in two showed as two letters, an accent moved to the next line."""
    text = "x" + unit * 200
    pieces = split_text(text, 100)
    assert "".join(pieces) == text
    for piece in pieces:
        assert len(piece.encode()) <= 100
        body = piece.removeprefix("x")
        assert body == unit * (len(body) // len(unit)), [piece[:12], piece[-12:]]


def test_event_lines_split_long_messages_under_512_bytes() -> None:
    event = {"type": "msg", "room": "r", "from": "al", "seq": 3, "ts": 1.5, "text": "é" * 1000}
    lines = tr.event_lines(event, tr.TIME | tr.MSGTAGS)
    assert len(lines) > 1
    for raw in lines:
        assert len(raw.split(b" ", 1)[1]) <= MAX_LINE
        assert parse_line(raw[:-2]).tags == {"time": "1970-01-01T00:00:01.500Z", "msgid": "3"}
    assert "".join(parse_line(raw[:-2]).params[1] for raw in lines) == "é" * 1000


def test_frame_cache_translates_a_broadcast_once() -> None:
    cache = tr.FrameCache()
    frame = encode_message(
        {"type": "msg", "room": "r", "from": "a", "seq": 1, "ts": 1.0, "text": "x"}
    )
    first = cache.get(frame)
    out = first.for_variant(tr.TIME)
    again = cache.get(frame)
    assert again is first and again.for_variant(tr.TIME) is out
    # an equal frame that is another object (another broadcast) is decoded anew
    assert cache.get(bytes(bytearray(frame))) is not first
    other = encode_message({"type": "joined", "room": "r", "nick": "b", "ts": 1.0})
    assert cache.get(other).event["type"] == "joined"
    assert msgspec.json.decode(frame[4:])["text"] == "x"


def test_iso_time_round_trips() -> None:
    stamp = tr.iso_time(1764375519.123)
    assert stamp == "2025-11-29T00:18:39.123Z"
    assert tr.parse_iso_time(stamp) == pytest.approx(1764375519.123)
    assert tr.parse_iso_time("yesterday") is None


def test_no_parameter_can_end_the_line() -> None:
    line = format_parts("TOPIC", ["#a", "one\r\ntwo\nthree\x00"], source="n!n@imchat")
    assert line == b":n!n@imchat TOPIC #a :one  two three \r\n"
    assert line.count(b"\n") == 1 and line.count(b"\r") == 1


def test_inert_writes_out_what_acts_on_the_text_around_it() -> None:
    """Bidi controls (marks, embeddings, overrides, isolates) and C0/C1 controls are written
    out; line breaks and tab become spaces; emoji sequences (ZWJ, VS16) stay as they are."""
    assert inert("\u202e👍\u200f\u2066x\u2069") == "\\u202e👍\\u200f\\u2066x\\u2069"
    assert inert("a\r\n\tb\x1b\x9c\x7f") == "a   b\\u001b\\u009c\\u007f"
    family = "👩\u200d👩\u200d👧\ufe0f"
    assert inert(family) == family
