"""Revision 3 request structs, sans-I/O: ``parse_request`` maps every fault to its code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imchat.protocol import (
    MAX_SEARCH_LIMIT,
    Delete,
    Dm,
    Edit,
    ErrorCode,
    Limits,
    Mark,
    Markers,
    ProtocolError,
    React,
    Say,
    Search,
    Typing,
    parse_request,
)

LIMITS = Limits(max_text=100)


def parse(obj: dict[str, Any]) -> Any:
    return parse_request(json.dumps(obj).encode(), LIMITS)


def code(obj: dict[str, Any]) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        parse(obj)
    return info.value.code


STREAMS = [{"room": "#Lobby"}, {"with": "Bob"}, {"announcements": True}]


@pytest.mark.parametrize("stream", STREAMS)
def test_each_request_names_one_stream(stream: dict[str, Any]) -> None:
    edit = parse({"type": "edit", **stream, "seq": 3, "text": "fixed", "id": 1, "cid": "c"})
    assert isinstance(edit, Edit) and edit.seq == 3 and edit.text == "fixed" and edit.cid == "c"
    assert edit.room in (None, "lobby")  # normalised like every room name
    assert isinstance(parse({"type": "delete", **stream, "seq": 1}), Delete)
    react = parse({"type": "react", **stream, "seq": 1, "emoji": "👍", "remove": True})
    assert isinstance(react, React) and react.remove
    assert isinstance(parse({"type": "mark", **stream, "seq": 0}), Mark)
    assert isinstance(parse({"type": "search", **stream, "text": "x"}), Search)


@pytest.mark.parametrize("kind", ["edit", "delete", "react", "mark", "typing"])
def test_no_stream_or_two_streams_is_bad_request(kind: str) -> None:
    extra = {"seq": 1, "text": "x", "emoji": "x"}
    assert code({"type": kind, **extra}) == ErrorCode.BAD_REQUEST
    assert code({"type": kind, "room": "a", "with": "bob", **extra}) == ErrorCode.BAD_REQUEST
    both = {"room": "a", "announcements": True}
    assert code({"type": kind, **both, **extra}) == ErrorCode.BAD_REQUEST
    assert code({"type": kind, "announcements": False, **extra}) == ErrorCode.BAD_REQUEST


def test_stream_names_are_checked() -> None:
    assert code({"type": "delete", "room": "no spaces", "seq": 1}) == ErrorCode.BAD_ROOM
    assert code({"type": "delete", "with": "9bad", "seq": 1}) == ErrorCode.BAD_NICK
    assert code({"type": "delete", "room": None, "with": "bob", "seq": 1}) == (
        ErrorCode.BAD_REQUEST
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": -1},
        {"seq": 2**63},
        {"seq": "1"},
        {"seq": 1.5},
        {"seq": True},
        {"seq": None},
        {},
        {"seq": 1, "cid": ""},
        {"seq": 1, "cid": "x" * 65},
        {"seq": 1, "cid": 5},
    ],
)
def test_seq_and_cid_must_be_well_formed(fields: dict[str, Any]) -> None:
    assert code({"type": "delete", "room": "a", **fields}) == ErrorCode.BAD_REQUEST


def test_edit_text_follows_the_text_rules() -> None:
    base = {"type": "edit", "room": "a", "seq": 1}
    assert code({**base, "text": ""}) == ErrorCode.BAD_TEXT
    assert code({**base, "text": "x" * 101}) == ErrorCode.BAD_TEXT
    assert code({**base, "text": "bell\x07"}) == ErrorCode.BAD_TEXT
    assert code(base) == ErrorCode.BAD_REQUEST
    assert parse({**base, "text": "x" * 100}).text == "x" * 100


def test_emoji_is_one_to_sixteen_code_points_of_text() -> None:
    base = {"type": "react", "room": "a", "seq": 1}
    assert parse({**base, "emoji": "👍🏽"}).emoji == "👍🏽"  # two code points
    assert parse({**base, "emoji": "x" * 16}).emoji == "x" * 16
    for bad in ("", "x" * 17, "\x1b", "\u0085"):
        assert code({**base, "emoji": bad}) == ErrorCode.BAD_TEXT
    assert code({**base, "emoji": 1}) == ErrorCode.BAD_REQUEST
    assert code({**base, "emoji": "x", "remove": "yes"}) == ErrorCode.BAD_REQUEST


def test_reply_to_on_say_and_dm() -> None:
    say = parse({"type": "say", "room": "a", "text": "x", "reply_to": 4})
    assert isinstance(say, Say) and say.reply_to == 4
    dm = parse({"type": "dm", "to": "bob", "text": "x", "reply_to": 0})
    assert isinstance(dm, Dm) and dm.reply_to == 0
    assert code({"type": "say", "room": "a", "text": "x", "reply_to": -2}) == (
        ErrorCode.BAD_REQUEST
    )
    assert code({"type": "dm", "to": "bob", "text": "x", "reply_to": "4"}) == (
        ErrorCode.BAD_REQUEST
    )
    assert parse({"type": "say", "room": "a", "text": "x"}).reply_to is None


def test_typing_is_for_rooms_and_dms() -> None:
    assert isinstance(parse({"type": "typing", "room": "a"}), Typing)
    assert isinstance(parse({"type": "typing", "with": "bob"}), Typing)
    assert code({"type": "typing", "announcements": True}) == ErrorCode.BAD_REQUEST


def test_markers_takes_nothing() -> None:
    assert isinstance(parse({"type": "markers", "id": "m"}), Markers)


def test_search_rules() -> None:
    search = parse({"type": "search", "text": "  deploy   green "})
    assert isinstance(search, Search) and search.terms == ["deploy", "green"]
    assert not search.names_stream and search.effective_limit == 50
    assert parse({"type": "search", "text": "x", "limit": 10**9}).effective_limit == (
        MAX_SEARCH_LIMIT
    )
    assert parse({"type": "search", "text": "x", "before": 5}).before == 5.0
    assert parse({"type": "search", "text": "x", "before": 1.5}).before == 1.5
    for text in ("", "   ", "\t\n"):
        assert code({"type": "search", "text": text}) == ErrorCode.BAD_TEXT
    assert code({"type": "search", "text": "a\x00"}) == ErrorCode.BAD_TEXT
    for bad in ({"limit": 0}, {"limit": "5"}, {"before": "now"}, {"before": True}):
        assert code({"type": "search", "text": "x", **bad}) == ErrorCode.BAD_REQUEST
    assert code({"type": "search", "text": "x", "room": "a", "with": "b"}) == (
        ErrorCode.BAD_REQUEST
    )


def test_errors_keep_the_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        parse({"type": "react", "room": "a", "seq": 1, "emoji": "", "id": "r1"})
    assert info.value.request_id == "r1"
