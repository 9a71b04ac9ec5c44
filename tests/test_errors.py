"""Malformed frames, request ids, unknown types, rate limits: answered right, others unaffected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, RawClient, join, next_event

from imchat.client import Connection, ServerError
from imchat.protocol import encode_frame, encode_message

#: Events other clients' comings and goings cause in the room.
BYSTANDERS = frozenset({"online", "offline", "joined", "parted"})


async def chatting_pair(connect: Clients) -> tuple[Connection, Connection]:
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await next_event(alice, "joined")
    return alice, bob


async def still_chatting(alice: Connection, bob: Connection, text: str) -> None:
    ok = await alice.request("say", room="lobby", text=text)
    for conn in (alice, bob):
        event = await next_event(conn, "msg", skip=BYSTANDERS)
        assert (event["seq"], event["text"]) == (ok["seq"], text)


BAD_FRAMES = {
    "empty": (b"\x00\x00\x00\x00", "bad_frame"),
    "not utf-8": (encode_frame(b'{"type":"ping","x":"\xff\xfe"}'), "bad_frame"),
    "overlong utf-8": (encode_frame(b'{"type":"ping","x":"\xc0\xaf"}'), "bad_frame"),
    "not json": (encode_frame(b"hello server"), "bad_frame"),
    "truncated json": (encode_frame(b'{"type":"ping"'), "bad_frame"),
    "array": (encode_frame(b'[{"type":"ping"}]'), "bad_frame"),
    "string": (encode_frame(b'"ping"'), "bad_frame"),
    "number": (encode_frame(b"7"), "bad_frame"),
    "null": (encode_frame(b"null"), "bad_frame"),
    "two objects": (encode_frame(b'{"type":"ping"}{"type":"ping"}'), "bad_frame"),
    "10 MB header": ((10 * 1024 * 1024).to_bytes(4, "big"), "frame_too_large"),
    "max header": (b"\xff\xff\xff\xff", "frame_too_large"),
    "one over": ((65537).to_bytes(4, "big"), "frame_too_large"),
}


@pytest.mark.parametrize("logged_in", [False, True], ids=["before-hello", "after-hello"])
@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frame_is_answered_and_closed(
    server: Any, connect: Clients, name: str, logged_in: bool
) -> None:
    alice, bob = await chatting_pair(connect)
    data, code = BAD_FRAMES[name]
    raw = await connect.raw()
    if logged_in:
        await raw.hello("mallory")
    # anything after the bad frame, even a valid request, is never answered
    raw.send_bytes(data + encode_message({"type": "ping", "id": 1}))
    frames = await raw.recv_until_eof()
    frames = [f for f in frames if f["type"] not in ("online", "offline")]
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "error"
    assert frames[0]["code"] == code
    assert "id" not in frames[0]
    assert isinstance(frames[0]["message"], str)
    await still_chatting(alice, bob, f"after {name}")


async def test_frames_before_a_bad_one_are_answered(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send_bytes(
        encode_message({"type": "ping", "id": 1})
        + encode_message({"type": "ping", "id": 2})
        + encode_frame(b"not json")
        + encode_message({"type": "ping", "id": 3})
    )
    frames = await raw.recv_until_eof()
    assert [(f["type"], f.get("id"), f.get("code")) for f in frames] == [
        ("pong", 1, None),
        ("pong", 2, None),
        ("error", None, "bad_frame"),
    ]


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfff"', '"\\ude00\\ud83d"'])
async def test_lone_surrogate_escape_is_refused(server: Any, connect: Clients, text: str) -> None:
    """JSON can escape a lone surrogate, which is no Unicode text: refused, never stored."""
    alice, bob = await chatting_pair(connect)
    raw = await connect.raw()
    await raw.hello("mallory")
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    raw.send_json('{"type":"say","room":"lobby","id":"s","text":' + text + "}")
    reply = await raw.recv_skip(skip=frozenset({"online", "offline", "joined"}))
    assert reply["type"] == "error"
    assert reply["code"] in ("bad_text", "bad_frame", "bad_request")
    await still_chatting(alice, bob, "unharmed")
    history = await alice.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["unharmed"]


async def test_oversized_header_is_refused_without_the_body(server: Any, connect: Clients) -> None:
    """Only the 4-byte header goes out; the error must come without a single body byte."""
    alice, bob = await chatting_pair(connect)
    raw = await connect.raw()
    await raw.hello("mallory")
    raw.send_bytes((10 * 1024 * 1024).to_bytes(4, "big"))
    await raw.drain()
    error = await raw.recv_skip()
    assert error == {"type": "error", "code": "frame_too_large", "message": error["message"]}
    with pytest.raises(EOFError):
        await raw.recv_skip()
    await still_chatting(alice, bob, "still here")


@pytest.mark.server_config(max_frame=1024)
async def test_max_frame_boundary(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("alice")
    body = b'{"type":"ping","id":"edge"}'
    exact = body + b" " * (1024 - len(body))
    raw.send_bytes(encode_frame(exact))
    assert await raw.recv_skip() == {"type": "pong", "id": "edge"}
    raw.send_bytes(encode_frame(exact + b" "))
    frames = [f for f in await raw.recv_until_eof() if f["type"] not in ("online", "offline")]
    assert [(f["type"], f["code"]) for f in frames] == [("error", "frame_too_large")]


async def test_frames_split_byte_by_byte(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    stream = b"".join(
        encode_message(m)
        for m in (
            {"type": "hello", "proto": 1, "nick": "alice", "id": 1},
            {"type": "join", "room": "lobby", "id": 2},
            {"type": "say", "room": "lobby", "text": "byte by byte ☃", "id": 3},
            {"type": "ping", "id": 4},
        )
    )
    for i in range(len(stream)):
        raw.send_bytes(stream[i : i + 1])
        await raw.drain()
        await asyncio.sleep(0)  # one loop turn per byte: the server reads each on its own
    frames = []
    while len(frames) < 6:
        frames.append(await raw.recv_skip())
    assert [(f["type"], f.get("id")) for f in frames] == [
        ("welcome", 1),
        ("ok", 2),
        ("joined", None),
        ("ok", 3),
        ("msg", None),
        ("pong", 4),
    ]
    assert frames[4]["text"] == "byte by byte ☃"


async def test_many_frames_in_one_write(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    await raw.hello("alice")
    raw.send_bytes(b"".join(encode_message({"type": "ping", "id": i}) for i in range(300)))
    pongs = [await raw.recv_skip() for _ in range(300)]
    assert pongs == [{"type": "pong", "id": i} for i in range(300)]


async def test_header_split_across_writes(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    frame = encode_message({"type": "ping", "id": "split"})
    for part in (frame[:1], frame[1:3], frame[3:5], frame[5:]):
        raw.send_bytes(part)
        await raw.drain()
    assert await raw.recv() == {"type": "pong", "id": "split"}


@pytest.mark.parametrize("rid", ["", "x", "x" * 64, 0, 7, -3, 2**53 + 1, 2**62, "7", "ünïcödé ☃"])
async def test_id_is_echoed_with_its_json_type(server: Any, connect: Clients, rid: Any) -> None:
    raw = await connect.raw()
    raw.send_json(json.dumps({"type": "ping", "id": rid}))
    pong = await raw.recv()
    assert pong == {"type": "pong", "id": rid}
    assert type(pong["id"]) is type(rid)
    # the same for ok and error replies
    await raw.hello("alice")
    raw.send_json(json.dumps({"type": "users", "id": rid}))
    ok = await raw.recv_skip()
    assert (ok["type"], ok["id"], type(ok["id"])) == ("ok", rid, type(rid))
    raw.send_json(json.dumps({"type": "say", "room": "nowhere", "text": "x", "id": rid}))
    error = await raw.recv_skip()
    assert (error["type"], error["code"], error["id"]) == ("error", "not_in_room", rid)
    assert type(error["id"]) is type(rid)


@pytest.mark.parametrize(
    "rid_json",
    [
        '"' + "x" * 65 + '"',
        '"' + "é" * 65 + '"',
        "1.5",
        "1.0",
        "1e3",
        "true",
        "null",
        "[]",
        "{}",
        "[1]",
    ],
)
async def test_invalid_id_is_bad_request_without_id(
    server: Any, connect: Clients, rid_json: str
) -> None:
    raw = await connect.raw()
    raw.send_json('{"type":"ping","id":' + rid_json + "}")
    error = await raw.recv()
    assert error == {"type": "error", "code": "bad_request", "message": error["message"]}
    # not fatal
    assert await raw.request({"type": "ping", "id": "after"}) == {"type": "pong", "id": "after"}


async def test_requests_without_id_get_replies_without_id(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send({"type": "ping"})
    assert await raw.recv() == {"type": "pong"}
    raw.send({"type": "users"})
    error = await raw.recv()
    assert error == {"type": "error", "code": "hello_required", "message": error["message"]}
    raw.send({"type": "hello", "proto": 1, "nick": "alice"})
    welcome = await raw.recv()
    assert welcome["type"] == "welcome" and "id" not in welcome
    raw.send({"type": "join", "room": "lobby"})
    ok = await raw.recv_skip()
    assert ok == {
        "type": "ok",
        "room": "lobby",
        "topic": "",
        "members": ["alice"],
        "last_seq": 0,
        "read": 0,  # revision 3: the user's read marker
    }
    raw.send({"type": "say", "room": "lobby", "text": "x"})
    frames = [await raw.recv_skip() for _ in range(3)]
    assert frames[0]["type"] == "joined"
    assert frames[1]["type"] == "ok" and set(frames[1]) == {"type", "seq", "ts"}
    assert frames[2]["type"] == "msg"


async def test_unknown_type(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    with pytest.raises(ServerError) as info:
        await alice.request("shout", text="HI")
    assert info.value.code == "unknown_type"
    assert (await alice.request("ping"))["type"] == "pong"


@pytest.mark.parametrize(
    "body", ['{"id":1}', '{"type":5,"id":1}', '{"type":null,"id":1}', '{"type":["ping"],"id":1}']
)
async def test_missing_or_mistyped_type(server: Any, connect: Clients, body: str) -> None:
    raw = await connect.raw()
    await raw.hello("alice")
    raw.send_json(body)
    error = await raw.recv_skip()
    assert (error["type"], error["code"], error["id"]) == ("error", "bad_request", 1)
    assert await raw.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "join"},
        {"type": "join", "room": 5},
        {"type": "say", "room": "lobby"},
        {"type": "say", "room": "lobby", "text": ["x"]},
        {"type": "say", "room": "lobby", "text": "x", "kind": "shout"},
        {"type": "topic", "room": "lobby"},
        {"type": "dm", "to": "bob"},
        {"type": "dm", "text": "hi"},
        {"type": "announce"},
    ],
)
async def test_missing_or_mistyped_fields(
    server: Any, connect: Clients, request_: dict[str, Any]
) -> None:
    admin = await connect.admin()
    await join(admin, "lobby")
    with pytest.raises(ServerError) as info:
        await admin.request(request_.pop("type"), **request_)
    assert info.value.code == "bad_request"


async def test_unknown_fields_are_ignored(server: Any, connect: Clients) -> None:
    raw = await connect.raw()
    raw.send({"type": "hello", "proto": 1, "nick": "alice", "x-color": "red", "id": 1})
    assert (await raw.recv())["type"] == "welcome"
    ok = await raw.request({"type": "join", "room": "lobby", "future": {"a": [1]}, "id": 2})
    assert ok["type"] == "ok"


@pytest.mark.server_config(rate=1.0, burst=4)
async def test_rate_limited(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")  # a join spends the budget too (rev 2): three says are left
    for i in range(3):
        await alice.request("say", room="lobby", text=f"burst {i}")
    with pytest.raises(ServerError) as info:
        await alice.request("say", room="lobby", text="one too many")
    assert info.value.code == "rate_limited"
    # not fatal, and other requests are not limited
    assert (await alice.request("users"))["users"] == ["alice"]
    history = await alice.request("history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["burst 0", "burst 1", "burst 2"]
    # another session has its own budget
    bob = await connect("bob")
    await join(bob, "lobby")
    assert (await bob.request("say", room="lobby", text="bob"))["seq"] == 4


@pytest.mark.server_config(rate=1.0, burst=2)
async def test_rate_limit_covers_dm_topic_join_and_announce(server: Any, connect: Clients) -> None:
    admin = await connect.admin()
    await connect("bob")
    await join(admin, "lobby")
    await admin.request("topic", room="lobby", text="t")
    for kind, fields in (
        ("join", {"room": "other"}),
        ("announce", {"text": "x"}),
        ("dm", {"to": "bob", "text": "x"}),
        ("topic", {"room": "lobby", "text": "x"}),
        ("say", {"room": "lobby", "text": "x"}),
    ):
        with pytest.raises(ServerError) as info:
            await admin.request(kind, **fields)
        assert info.value.code == "rate_limited", kind


@pytest.mark.parametrize("when", ["at once", "after a wait"])
async def test_internal_error_is_reported_and_not_fatal(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A bug while handling one request answers `internal`; the session and the others go on."""
    alice = await connect("alice")
    bob = await connect("bob")
    await join(alice, "lobby")
    await join(bob, "lobby")

    async def broken_later(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)  # fails only after giving up the loop, as real I/O would
        raise RuntimeError("disk on fire")

    def broken_now(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.store, "append", broken_now if when == "at once" else broken_later)
    if hasattr(server.store, "start_append"):  # how a room message reaches the store (no task)
        monkeypatch.setattr(
            server.store,
            "start_append",
            broken_now if when == "at once" else lambda d: asyncio.ensure_future(broken_later(d)),
        )
        # A run's room messages go in groups (queue_append); without it, through start_append.
        # A failing group: test_a_failing_group_answers_each_of_its_messages_internal.
        # The context reads it once, when the server starts.
        monkeypatch.setattr(server.hub.ctx, "queue_append", None)
    raw = await connect.raw()
    await raw.hello("carol")
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    # a pipelined burst: each request gets its own answer, in order, the session survives
    raw.send_bytes(
        encode_message({"type": "say", "room": "lobby", "text": "boom", "id": 1})
        + encode_message({"type": "ping", "id": 2})
        + encode_message({"type": "say", "room": "lobby", "text": "boom", "id": 3})
        + encode_message({"type": "users", "id": 4})
    )
    frames = [await raw.recv_skip(skip=BYSTANDERS) for _ in range(4)]
    assert [(f["type"], f.get("id"), f.get("code")) for f in frames] == [
        ("error", 1, "internal"),
        ("pong", 2, None),
        ("error", 3, "internal"),
        ("ok", 4, None),
    ]
    assert "disk on fire" not in frames[0]["message"]  # no internals leak to clients
    monkeypatch.undo()
    assert (await alice.request("say", room="lobby", text="fine"))["seq"] == 1
    event = await next_event(bob, "msg", skip=BYSTANDERS)
    assert (event["seq"], event["text"]) == (1, "fine")


async def test_garbage_connection_does_not_disturb_a_busy_room(
    server: Any, connect: Clients
) -> None:
    """Vandals come and go (each bad frame kind, three times over) while two users chat."""
    alice, bob = await chatting_pair(connect)
    vandals_done = asyncio.Event()

    async def vandal(data: bytes, code: str) -> None:
        raw = await RawClient.open(server.port)
        try:
            raw.send_bytes(data)
            frames = await raw.recv_until_eof()
            assert [(f["type"], f["code"]) for f in frames] == [("error", code)]
        finally:
            await raw.close()

    async def vandalise() -> None:
        try:
            for _ in range(3):
                await asyncio.gather(*(vandal(d, c) for d, c in BAD_FRAMES.values()))
        finally:
            vandals_done.set()

    async def chat() -> int:
        said = 0
        while not vandals_done.is_set() or said < 10:
            await still_chatting(alice, bob, f"busy {said}")
            said += 1
        return said

    _, said = await asyncio.wait_for(asyncio.gather(vandalise(), chat()), TIMEOUT * 4)
    assert said >= 10
    for i in range(5):
        await still_chatting(alice, bob, f"after {i}")
