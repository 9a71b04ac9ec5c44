"""parse_request: every request type, every error it decides, names and text rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imchat.protocol import (
    Announce,
    Bye,
    Dm,
    ErrorCode,
    Hello,
    History,
    Join,
    Limits,
    Part,
    Ping,
    ProtocolError,
    Rooms,
    Say,
    Topic,
    Users,
    normalize_room,
    parse_request,
)
from imchat.protocol.names import check_nick, check_text, is_valid_nick, nick_key

LIMITS = Limits()


def parse(obj: Any, limits: Limits = LIMITS) -> Any:
    return parse_request(json.dumps(obj).encode(), limits)


def fault(obj: Any, limits: Limits = LIMITS) -> ProtocolError:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    with pytest.raises(ProtocolError) as info:
        parse_request(payload, limits)
    return info.value


# --------------------------------------------------------------------------- valid requests


def test_every_request_type_parses() -> None:
    hello = parse(
        {
            "type": "hello",
            "proto": 1,
            "nick": "Alice",
            "password": "pw",
            "token": "t",
            "client": "tui/1",
            "id": 1,
        }
    )
    assert isinstance(hello, Hello)
    assert (hello.nick, hello.password, hello.token, hello.client, hello.id) == (
        "Alice",
        "pw",
        "t",
        "tui/1",
        1,
    )
    assert isinstance(parse({"type": "ping"}), Ping)
    assert isinstance(parse({"type": "bye"}), Bye)
    join = parse({"type": "join", "room": "#Lobby"})
    assert isinstance(join, Join) and join.room == "lobby"
    part = parse({"type": "part", "room": "lobby"})
    assert isinstance(part, Part) and part.room == "lobby"
    say = parse({"type": "say", "room": "Lobby", "text": "hi", "kind": "action", "cid": "c1"})
    assert isinstance(say, Say)
    assert (say.room, say.text, say.kind, say.cid) == ("lobby", "hi", "action", "c1")
    topic = parse({"type": "topic", "room": "lobby", "text": ""})
    assert isinstance(topic, Topic) and topic.text == ""
    assert isinstance(parse({"type": "rooms"}), Rooms)
    assert isinstance(parse({"type": "users"}), Users)
    dm = parse({"type": "dm", "to": "bob", "text": "yo", "cid": "x" * 64})
    assert isinstance(dm, Dm) and (dm.to, dm.text, dm.cid) == ("bob", "yo", "x" * 64)
    ann = parse({"type": "announce", "text": "maintenance"})
    assert isinstance(ann, Announce) and ann.text == "maintenance" and ann.cid is None
    history = parse({"type": "history", "room": "#Lobby", "after": 3, "before": 9, "limit": 7})
    assert isinstance(history, History)
    assert (history.room, history.after, history.before, history.limit) == ("lobby", 3, 9, 7)
    assert parse({"type": "history", "with": "bob"}).with_ == "bob"
    assert parse({"type": "history", "announcements": True}).announcements is True


def test_history_limits() -> None:
    assert parse({"type": "history", "room": "a"}).effective_limit == 50
    assert parse({"type": "history", "room": "a", "limit": 500}).effective_limit == 500
    assert parse({"type": "history", "room": "a", "limit": 501}).effective_limit == 500
    assert parse({"type": "history", "room": "a", "limit": 10**9}).effective_limit == 500
    assert parse({"type": "history", "room": "a", "limit": 1}).effective_limit == 1


def test_unknown_fields_are_ignored() -> None:
    say = parse({"type": "say", "room": "lobby", "text": "hi", "x-extension": {"a": 1}})
    assert isinstance(say, Say) and say.text == "hi"


@pytest.mark.parametrize("rid", ["", "a", "x" * 64, 0, -5, 2**53 + 1, 2**63 - 1])
def test_valid_ids_are_kept_with_their_type(rid: Any) -> None:
    request = parse({"type": "ping", "id": rid})
    assert request.id == rid
    assert type(request.id) is type(rid)


def test_request_without_id_has_none() -> None:
    assert parse({"type": "ping"}).id is None


# --------------------------------------------------------------------------- frame faults


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe{}",
        b'{"type":"ping","x":"\xc3"}',
        b'{"type":"ping","x":"\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        b"hello",
        b"{",
        b'{"type":"ping"} x',
        b'{"type":"ping"}{"type":"ping"}',
        b"[]",
        b"[1,2]",
        b'"ping"',
        b"42",
        b"null",
        b"true",
        b" ",
    ],
)
def test_bad_frames(payload: bytes) -> None:
    error = fault(payload)
    assert error.code == ErrorCode.BAD_FRAME
    assert error.fatal
    assert error.request_id is None


# --------------------------------------------------------------------------- request faults


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({}, ErrorCode.BAD_REQUEST),
        ({"id": 3}, ErrorCode.BAD_REQUEST),
        ({"type": 5}, ErrorCode.BAD_REQUEST),
        ({"type": None}, ErrorCode.BAD_REQUEST),
        ({"type": "shout"}, ErrorCode.UNKNOWN_TYPE),
        ({"type": ""}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "hello", "proto": 1}, ErrorCode.BAD_REQUEST),
        ({"type": "hello", "nick": "a"}, ErrorCode.BAD_REQUEST),
        ({"type": "hello", "proto": 2, "nick": "a"}, ErrorCode.BAD_REQUEST),
        ({"type": "hello", "proto": "1", "nick": "a"}, ErrorCode.BAD_REQUEST),
        ({"type": "hello", "proto": 1, "nick": 7}, ErrorCode.BAD_REQUEST),
        ({"type": "hello", "proto": 1, "nick": "9lives"}, ErrorCode.BAD_NICK),
        ({"type": "hello", "proto": 1, "nick": "ok", "password": 5}, ErrorCode.BAD_REQUEST),
        ({"type": "join"}, ErrorCode.BAD_REQUEST),
        ({"type": "join", "room": ["lobby"]}, ErrorCode.BAD_REQUEST),
        ({"type": "join", "room": "Bad Room"}, ErrorCode.BAD_ROOM),
        ({"type": "part", "room": ""}, ErrorCode.BAD_ROOM),
        ({"type": "say", "room": "lobby"}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "text": "hi"}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": 5}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": ""}, ErrorCode.BAD_TEXT),
        ({"type": "say", "room": "lobby", "text": "hi", "kind": "shout"}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": "hi", "cid": ""}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": "hi", "cid": "c" * 65}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": "hi", "cid": 5}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": "hi", "cid": None}, ErrorCode.BAD_REQUEST),
        ({"type": "dm", "to": "bob", "text": "hi", "cid": None}, ErrorCode.BAD_REQUEST),
        ({"type": "announce", "text": "hi", "cid": None}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": "lobby", "text": "hi", "kind": None}, ErrorCode.BAD_REQUEST),
        ({"type": "say", "room": None, "text": "hi"}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "after": None}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "limit": None}, ErrorCode.BAD_REQUEST),
        ({"type": "topic", "room": "lobby"}, ErrorCode.BAD_REQUEST),
        ({"type": "topic", "room": "lobby", "text": "\x07"}, ErrorCode.BAD_TEXT),
        ({"type": "dm", "text": "hi"}, ErrorCode.BAD_REQUEST),
        ({"type": "dm", "to": "bob"}, ErrorCode.BAD_REQUEST),
        ({"type": "dm", "to": "bob", "text": ""}, ErrorCode.BAD_TEXT),
        ({"type": "dm", "to": "bob", "text": "hi", "cid": ""}, ErrorCode.BAD_REQUEST),
        ({"type": "announce"}, ErrorCode.BAD_REQUEST),
        ({"type": "announce", "text": "\x00"}, ErrorCode.BAD_TEXT),
        ({"type": "announce", "text": "a", "cid": "c" * 65}, ErrorCode.BAD_REQUEST),
        ({"type": "history"}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "announcements": False}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "with": "bob"}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "announcements": True}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "after": -1}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "before": "3"}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "limit": 0}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "a", "limit": "5"}, ErrorCode.BAD_REQUEST),
        ({"type": "history", "room": "No Such"}, ErrorCode.BAD_ROOM),
        ({"type": "history", "with": "-bob"}, ErrorCode.BAD_NICK),
    ],
)
def test_request_faults(obj: dict[str, Any], code: ErrorCode) -> None:
    error = fault({**obj, "id": "r1"})
    assert error.code == code
    assert not error.fatal
    assert error.request_id == "r1"  # a valid id is echoed in the error reply
    assert error.message


@pytest.mark.parametrize("rid", ["x" * 65, 1.5, 1.0, True, None, [], {}, [1]])
def test_invalid_ids_are_bad_request_without_id(rid: Any) -> None:
    error = fault({"type": "ping", "id": rid})
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.request_id is None


def test_text_length_follows_max_text_in_code_points() -> None:
    limits = Limits(max_text=5)
    assert parse({"type": "say", "room": "a", "text": "😀" * 5}, limits).text == "😀" * 5
    assert fault({"type": "say", "room": "a", "text": "😀" * 6}, limits).code == ErrorCode.BAD_TEXT
    assert parse({"type": "topic", "room": "a", "text": "12345"}, limits).text == "12345"
    assert fault({"type": "topic", "room": "a", "text": "123456"}, limits).code == "bad_text"
    assert fault({"type": "dm", "to": "b", "text": "123456"}, limits).code == "bad_text"
    assert fault({"type": "announce", "text": "123456"}, limits).code == "bad_text"


# --------------------------------------------------------------------------- names and text


@pytest.mark.parametrize(
    "nick",
    [
        "a",
        "A",
        "_",
        "[x]",
        "\\",
        "^",
        "{}",
        "|",
        "`",
        "a-1",
        "Z" * 32,
        "x9",
        "a_b-c[d]e\\f^g{h}i|j`",
    ],
)
def test_valid_nicks(nick: str) -> None:
    assert is_valid_nick(nick)
    assert check_nick(nick) == nick
    hello = parse({"type": "hello", "proto": 1, "nick": nick})
    assert hello.nick == nick  # the chosen spelling is kept


@pytest.mark.parametrize(
    "nick",
    [
        "",
        "1abc",
        "-abc",
        "a b",
        "a.b",
        "a#",
        "é",
        "a\n",
        "Z" * 33,
        "\uff41",
        "a@b",
        "a\x00",
        "\u212a",
    ],
)
def test_invalid_nicks(nick: str) -> None:
    assert not is_valid_nick(nick)
    with pytest.raises(ProtocolError) as info:
        check_nick(nick)
    assert info.value.code == ErrorCode.BAD_NICK


def test_nick_key_is_case_insensitive() -> None:
    assert nick_key("Alice") == nick_key("ALICE") == nick_key("alice")
    assert nick_key("A[b]") != nick_key("A{b}")  # no RFC 1459 case folding


@pytest.mark.parametrize(
    ("room", "normal"),
    [
        ("lobby", "lobby"),
        ("#lobby", "lobby"),
        ("#Lobby", "lobby"),
        ("LOBBY", "lobby"),
        ("0day", "0day"),
        ("a.b-c_d", "a.b-c_d"),
        ("r" * 64, "r" * 64),
        ("#" + "R" * 64, "r" * 64),
    ],
)
def test_valid_rooms(room: str, normal: str) -> None:
    assert normalize_room(room) == normal


@pytest.mark.parametrize(
    "room",
    [
        "",
        "#",
        "##lobby",
        "-x",
        ".x",
        "_x",
        "a b",
        "a/b",
        "a#b",
        "r" * 65,
        "#" + "r" * 65,
        "caf\u00e9",
        "\u212aelvin",
        "lobby\n",
        "lob\u0131by",
    ],
)
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(ProtocolError) as info:
        normalize_room(room)
    assert info.value.code == ErrorCode.BAD_ROOM


def test_room_names_are_answered_from_the_cache_the_same_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``normalize_room`` keeps valid names it checked (a say names a room each time): a
    second call answers from the cache, with the same name; an invalid name is never kept
    and is refused every time; the cache holds at most ``ROOM_CACHE_SIZE`` names."""
    from imchat.protocol import names

    monkeypatch.setattr(names, "_rooms", {})
    checked: list[str] = []
    real = names._ROOM

    class Counting:
        def fullmatch(self, name: str) -> Any:
            checked.append(name)
            return real.fullmatch(name)

    monkeypatch.setattr(names, "_ROOM", Counting())
    assert normalize_room("#Lobby") == "lobby"
    assert normalize_room("#Lobby") == "lobby"
    assert normalize_room("lobby") == "lobby"
    assert checked == ["lobby", "lobby"]  # "#Lobby" once, "lobby" once
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            normalize_room("#Bad Room")
        assert info.value.code == ErrorCode.BAD_ROOM
    assert "#Bad Room" not in names._rooms
    for i in range(names.ROOM_CACHE_SIZE * 3):
        assert normalize_room(f"#R{i}") == f"r{i}"
        assert len(names._rooms) <= names.ROOM_CACHE_SIZE
    assert normalize_room("#Lobby") == "lobby"  # forgotten with the rest, checked again


@pytest.mark.parametrize(
    "text",
    [
        "hi",
        "line one\nline two",
        "tab\there",
        " padded ",
        "e\u0301",
        "\u00a0nbsp",
        "\u200b",
        "😀",
        "\U0010ffff",
        "\u00a0\u00ff",
    ],
)
def test_allowed_text_is_kept_exactly(text: str) -> None:
    assert check_text(text, 4000) == text
    assert parse({"type": "say", "room": "a", "text": text}).text == text


@pytest.mark.parametrize(
    "char",
    [
        *(chr(c) for c in range(0x20) if c not in (0x09, 0x0A)),
        "\x7f",
        *(chr(c) for c in range(0x80, 0xA0)),
    ],
)
def test_control_characters_are_refused(char: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_text(f"a{char}b", 4000)
    assert info.value.code == ErrorCode.BAD_TEXT
    assert fault({"type": "say", "room": "a", "text": char}).code == ErrorCode.BAD_TEXT


#: The contract's forbidden characters, spelled out: C0 but tab and newline, DEL, C1.
FORBIDDEN = frozenset(
    [*(c for c in range(0x20) if c not in (0x09, 0x0A)), 0x7F, *range(0x80, 0xA0)]
)


@settings(max_examples=500)
@given(st.text(max_size=40))
def test_text_is_refused_exactly_when_it_holds_a_forbidden_character(text: str) -> None:
    # check_text asks str.isprintable() first and the pattern only when that says no: the
    # verdict must still be the contract's for every string, printable or not.
    allowed = not any(ord(char) in FORBIDDEN for char in text)
    try:
        check_text(text, 4000, allow_empty=True)
    except ProtocolError as error:
        assert not allowed and error.code == ErrorCode.BAD_TEXT
    else:
        assert allowed


def test_empty_text_only_for_topic() -> None:
    with pytest.raises(ProtocolError):
        check_text("", 10)
    assert check_text("", 10, allow_empty=True) == ""
