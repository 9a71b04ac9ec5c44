"""The typed server frames: what the server sends decodes into them, and they encode as the
contract writes them (optional fields absent rather than null, ``from``/``with`` spelled so)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from conftest import Clients, RawClient, admin_token

from imchat.protocol import ErrorCode, ProtocolError, encode_message
from imchat.protocol.events import (
    EVENT_TYPES,
    ErrorReply,
    MarkerEvent,
    MessageOk,
    MsgEvent,
    Ok,
    RoomEntry,
    TypingEvent,
    Welcome,
    decode_event,
    decode_stored,
    event_from_dict,
)


def payload(frame: bytes) -> dict[str, Any]:
    decoded = json.loads(frame[4:])
    assert isinstance(decoded, dict)
    return decoded


def test_optional_fields_are_left_out_and_keywords_spelled_as_the_contract() -> None:
    assert payload(encode_message(MsgEvent(room="lobby", from_="amy", text="hi"))) == {
        "type": "msg",
        "room": "lobby",
        "from": "amy",
        "text": "hi",
    }
    assert payload(encode_message(TypingEvent(from_="amy", with_="bob"))) == {
        "type": "typing",
        "from": "amy",
        "with": "bob",
    }
    # Falsy values of fields the frame always carries are still sent.
    ok = Ok(id=0, room="lobby", topic="", members=[], last_seq=0)
    assert payload(encode_message(ok)) == {
        "type": "ok",
        "id": 0,
        "room": "lobby",
        "topic": "",
        "members": [],
        "last_seq": 0,
    }
    welcome = Welcome(proto=1, nick="a", server="s", max_frame=1, max_text=1, admin=False)
    assert payload(encode_message(welcome))["admin"] is False


def test_error_reply_carries_the_request_id_of_the_error() -> None:
    error = ProtocolError(ErrorCode.NOT_IN_ROOM, "no", request_id="x")
    assert payload(encode_message(ErrorReply.of(error))) == {
        "type": "error",
        "code": "not_in_room",
        "message": "no",
        "id": "x",
    }
    fatal = ProtocolError(ErrorCode.SHUTTING_DOWN, "bye")
    assert "id" not in payload(encode_message(ErrorReply.of(fatal)))


def test_decoding_ignores_unknown_fields_and_refuses_unknown_types() -> None:
    event = decode_event(b'{"type":"marker","seq":3,"with":"bob","future":1}')
    assert event == MarkerEvent(seq=3, with_="bob")
    rooms = decode_event(b'{"type":"ok","rooms":[{"room":"a","count":1,"topic":""}],"more":true}')
    assert isinstance(rooms, Ok) and rooms.rooms == [RoomEntry(room="a", count=1, topic="")]
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type":"shrug"}')
    with pytest.raises(msgspec.ValidationError):
        decode_stored(b'{"type":"pong"}')
    assert {"welcome", "ok", "error", "msg", "dm", "announce", "marker"} <= EVENT_TYPES


async def frames_until(raw: RawClient, kinds: set[str]) -> list[dict[str, Any]]:
    """Frames until one of each type in ``kinds`` came and a ping was answered after them.

    Over Redis an event can follow a later reply (it comes back over pub/sub), so the wait is
    for the frames themselves, bounded by ``recv``'s timeout.
    """
    frames: list[dict[str, Any]] = []
    while not kinds <= {frame["type"] for frame in frames}:
        frames.append(await raw.recv())
    raw.send({"type": "ping", "id": "end"})
    while frames[-1].get("id") != "end":
        frames.append(await raw.recv())
    return frames


async def test_every_frame_a_session_receives_decodes(
    server: Any, connect: Clients, data_dir: Any
) -> None:
    admin = await connect.raw()
    await admin.hello("admin", token=admin_token(data_dir))
    bob = await connect.raw()
    await bob.hello("bob")
    # DM peers (rev 2: presence is scoped), so admin is told when bob goes offline.
    assert (await bob.request({"type": "dm", "to": "admin", "text": "hi", "id": 1}))["type"] == "ok"
    for message in (
        {"type": "join", "room": "lobby"},
        {"type": "topic", "room": "lobby", "text": "hello"},
        {"type": "say", "room": "lobby", "text": "hi", "cid": "c1"},
        {"type": "say", "room": "lobby", "text": "waves", "kind": "action"},
        {"type": "dm", "to": "bob", "text": "psst"},
        {"type": "announce", "text": "news"},
        {"type": "rooms"},
        {"type": "users"},
        {"type": "history", "room": "lobby"},
        {"type": "history", "with": "bob"},
        {"type": "history", "announcements": True},
        {"type": "part", "room": "lobby"},
        {"type": "part", "room": "lobby"},  # not_in_room
        {"type": "ping"},
    ):
        admin.send(message)
    await bob.close()
    kinds = {"ok", "joined", "topic", "msg", "dm", "announce", "parted", "offline", "error", "pong"}
    frames = await frames_until(admin, kinds)
    for frame in frames:
        event_from_dict(frame)
    history = [f for f in frames if f["type"] == "ok" and "messages" in f]
    assert len(history) == 3
    for reply in history:
        for entry in reply["messages"]:
            decode_stored(json.dumps(entry).encode())


@pytest.mark.parametrize("request_id", [None, 0, 7, -3, 2**63 - 1, "x", 'q"\\u', "é" * 64])
@pytest.mark.parametrize("ts", [0.0, 1.5, 1764450000.123, 1764450000.0, 1e-7, 1e21])
def test_message_ok_encodes_as_ok(request_id: object, ts: float) -> None:
    """The server's ``ok`` of a room message (``MessageOk``) is byte for byte the ``Ok``
    the contract names, whatever the id and time."""
    assert msgspec.json.encode(
        MessageOk(id=request_id, seq=41, ts=ts)  # type: ignore[arg-type]
    ) == msgspec.json.encode(Ok(id=request_id, seq=41, ts=ts))  # type: ignore[arg-type]
