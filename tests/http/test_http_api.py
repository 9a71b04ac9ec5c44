"""The HTTP API against a real server, with a real HTTP client: every endpoint and error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import PRESENCE, TIMEOUT, Clients, assert_ts, join, next_event, pending_events
from httpfixtures import Http, http_fixture  # noqa: F401

ROOM = "/api/v1/rooms/lobby/messages"


async def lobby_member(connect: Clients, nick: str = "bob") -> Any:
    conn = await connect(nick)
    await join(conn, "lobby")
    return conn


async def test_room_message_reaches_members_without_presence_noise(
    http: Http, connect: Clients
) -> None:
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    status, body, _ = await http.post(ROOM, token=token, json={"text": "deploy finished"})
    assert status == 200, body
    assert body["seq"] == 1
    assert_ts(body["ts"])
    # Every event bob gets, presence included: only the message, never deploy joining,
    # coming online, parting or going offline.
    event = await next_event(bob, skip=frozenset())
    assert event == {
        "type": "msg",
        "room": "lobby",
        "from": "deploy",
        "text": "deploy finished",
        "seq": 1,
        "ts": body["ts"],
    }
    assert await pending_events(bob, skip=frozenset()) == []
    ok = await bob.request("users")
    assert ok["users"] == ["bob"]
    members = await bob.request("join", room="lobby")
    assert members["members"] == ["bob"]


async def test_text_plain_body_drops_one_trailing_newline(http: Http, connect: Clients) -> None:
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    status, body, _ = await http.post(
        ROOM, token=token, data=b"two\nlines\n", headers={"Content-Type": "text/plain"}
    )
    assert status == 200, body
    event = await next_event(bob, "msg")
    assert event["text"] == "two\nlines"


async def test_action_kind_passes_through(http: Http, connect: Clients) -> None:
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    status, _, _ = await http.post(ROOM, token=token, json={"text": "waves", "kind": "action"})
    assert status == 200
    assert (await next_event(bob, "msg"))["kind"] == "action"
    status, body, _ = await http.post(ROOM, token=token, json={"text": "x", "kind": "shout"})
    assert (status, body["code"]) == (400, "bad_request")


async def test_idempotency_key_is_the_cid(http: Http, connect: Clients) -> None:
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    headers = {"Idempotency-Key": "build-42"}
    first = await http.post(ROOM, token=token, json={"text": "once"}, headers=headers)
    again = await http.post(ROOM, token=token, json={"text": "once"}, headers=headers)
    assert first[0] == again[0] == 200
    assert (first[1]["seq"], first[1]["ts"]) == (again[1]["seq"], again[1]["ts"])
    await http.post(ROOM, token=token, json={"text": "marker"})
    assert (await next_event(bob, "msg"))["text"] == "once"
    assert (await next_event(bob, "msg"))["text"] == "marker"
    status, body, _ = await http.post(
        ROOM, token=token, json={"text": "x"}, headers={"Idempotency-Key": "k" * 65}
    )
    assert (status, body["code"]) == (400, "bad_request")


async def test_account_online_elsewhere_sees_its_own_post(http: Http, connect: Clients) -> None:
    token = await http.account("deploy")
    deploy = await connect("deploy", token=token)
    await join(deploy, "lobby")
    status, _, _ = await http.post(ROOM, token=token, json={"text": "from curl"})
    assert status == 200
    event = await next_event(deploy, "msg")
    assert (event["from"], event["text"]) == ("deploy", "from curl")


async def test_dm(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    token = await http.account("deploy")
    status, body, _ = await http.post("/api/v1/dms/bob", token=token, json={"text": "psst"})
    assert status == 200, body
    event = await next_event(bob, "dm")
    assert (event["from"], event["to"], event["text"], event["seq"]) == (
        "deploy",
        "bob",
        "psst",
        body["seq"],
    )
    status, body, _ = await http.post("/api/v1/dms/nobody", token=token, json={"text": "hi"})
    assert (status, body["code"]) == (404, "no_such_user")
    status, body, _ = await http.get("/api/v1/dms/bob", token=token)
    assert status == 200
    assert [m["text"] for m in body["messages"]] == ["psst"]


async def test_announcement(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    carol = await connect("carol")
    status, body, _ = await http.post(
        "/api/v1/announcements", token=http.admin, json={"text": "maintenance at 18:00"}
    )
    assert status == 200, body
    assert body["delivered"] == 2  # bob and carol; the HTTP caller is no session
    for conn in (bob, carol):
        event = await next_event(conn, "announce")
        assert (event["from"], event["text"]) == ("admin", "maintenance at 18:00")
    user = await http.account("deploy")
    status, body, _ = await http.post("/api/v1/announcements", token=user, json={"text": "hi"})
    assert (status, body["code"]) == (403, "forbidden")
    status, body, _ = await http.get("/api/v1/announcements", token=user)
    assert [m["text"] for m in body["messages"]] == ["maintenance at 18:00"]


async def test_history_pages_like_the_protocol(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")
    for n in range(1, 8):
        status, body, _ = await http.post(ROOM, token=token, json={"text": f"m{n}"})
        assert body["seq"] == n
    texts = lambda body: [m["text"] for m in body["messages"]]  # noqa: E731
    _, body, _ = await http.get(ROOM, token=token)
    assert texts(body) == [f"m{n}" for n in range(1, 8)]
    _, body, _ = await http.get(ROOM + "?after=2&limit=3", token=token)
    assert texts(body) == ["m3", "m4", "m5"]
    _, body, _ = await http.get(ROOM + "?before=3", token=token)
    assert texts(body) == ["m1", "m2"]
    _, body, _ = await http.get(ROOM + "?after=2&before=5", token=token)
    assert texts(body) == ["m3", "m4"]
    status, body, _ = await http.get(ROOM + "?after=two", token=token)
    assert (status, body["code"]) == (400, "bad_request")
    status, body, _ = await http.get(ROOM + "?limit=0", token=token)
    assert (status, body["code"]) == (400, "bad_request")
    status, body, _ = await http.get("/api/v1/rooms/nowhere/messages", token=token)
    assert (status, body["code"]) == (404, "no_such_room")


# -- errors ------------------------------------------------------------------------------------


async def test_authentication_errors(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    status, body, headers = await http.post(ROOM, json={"text": "hi"})
    assert (status, body["code"]) == (401, "auth_failed")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await http.post(ROOM, token="not-a-token", json={"text": "hi"})
    assert (status, body["code"]) == (401, "auth_failed")
    status, body, _ = await http.post(
        ROOM, json={"text": "hi"}, headers={"Authorization": "Basic Zm9vOmJhcg=="}
    )
    assert (status, body["code"]) == (401, "auth_failed")


@pytest.mark.server_config(auth_failures=3, auth_window=60)
async def test_failed_tokens_share_the_login_limiter(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    good = await http.account("deploy")
    for _ in range(3):
        status, _, _ = await http.post(ROOM, token="wrong", json={"text": "hi"})
        assert status == 401
    status, body, headers = await http.post(ROOM, token=good, json={"text": "hi"})
    assert (status, body["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) == 60
    # The same address is blocked on the native port too: one limiter.
    native = await connect()
    with pytest.raises(Exception, match="rate_limited"):
        await native.hello("deploy", token=good)


async def test_room_errors(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")
    status, body, _ = await http.post(
        "/api/v1/rooms/nowhere/messages", token=token, json={"text": "hi"}
    )
    assert (status, body["code"]) == (404, "no_such_room")
    status, body, _ = await http.post(
        "/api/v1/rooms/Bad!Room/messages", token=token, json={"text": "hi"}
    )
    assert (status, body["code"]) == (400, "bad_room")
    # A leading # (encoded) and capitals are fine, as in the protocol.
    status, body, _ = await http.post(
        "/api/v1/rooms/%23LOBBY/messages", token=token, json={"text": "hi"}
    )
    assert status == 200, body


@pytest.mark.server_config(max_text=10, max_frame=1024)
async def test_text_and_body_errors(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"text": ""}}, 400, "bad_text"),
        ({"json": {"text": "a\x1bb"}}, 400, "bad_text"),
        ({"json": {"text": "x" * 11}}, 400, "bad_text"),
        ({"json": {"txt": "hi"}}, 400, "bad_request"),
        ({"json": ["hi"]}, 400, "bad_request"),
        ({"json": {"text": 5}}, 400, "bad_request"),
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
        ({"data": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}}, 400, "bad_text"),
        (
            {"data": b"hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "bad_request",
        ),
        ({"data": b"x" * 2000, "headers": {"Content-Type": "text/plain"}}, 413, "frame_too_large"),
    ]
    for kwargs, want_status, want_code in cases:
        status, body, _ = await http.post(ROOM, token=token, **kwargs)
        assert (status, body["code"]) == (want_status, want_code), (kwargs, body)
        assert isinstance(body["message"], str) and body["message"]


@pytest.mark.server_config(max_frame=1024)
async def test_chunked_body_over_the_limit_is_413(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")

    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 100

    status, body, _ = await http.post(
        ROOM, token=token, data=chunks(), headers={"Content-Type": "text/plain"}
    )
    assert (status, body["code"]) == (413, "frame_too_large")


@pytest.mark.server_config(rate=0.5, burst=2)
async def test_rate_limit_is_429_with_retry_after(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")
    for _ in range(2):
        status, _, _ = await http.post(ROOM, token=token, json={"text": "hi"})
        assert status == 200
    status, body, headers = await http.post(ROOM, token=token, json={"text": "hi"})
    assert (status, body["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) == 2
    # The bucket is the account's: another account is not limited by it.
    other = await http.account("other")
    status, _, _ = await http.post(ROOM, token=other, json={"text": "hi"})
    assert status == 200


async def test_unknown_paths_and_methods_are_json(http: Http) -> None:
    status, body, _ = await http.get("/api/v1/nothing")
    assert (status, body["code"]) == (404, "bad_request")
    status, body, headers = await http.call("DELETE", ROOM)
    assert (status, body["code"]) == (405, "bad_request")
    # RFC 9110: a 405 names the methods the resource has (it lost aiohttp's Allow header)
    assert sorted(headers["Allow"].split(",")) == ["GET", "HEAD", "POST"]


async def test_shutting_down_is_503(http: Http, connect: Clients) -> None:
    await lobby_member(connect)
    token = await http.account("deploy")
    await http.server.http.stop_accepting()
    status, body, headers = await http.post(ROOM, token=token, json={"text": "hi"})
    assert (status, body["code"]) == (503, "shutting_down")
    assert int(headers["Retry-After"]) >= 1


async def test_store_failure_is_503_internal(http: Http, connect: Clients) -> None:
    if http.server.config.redis_url is not None:
        pytest.skip("closes the SQLite writer")
    await lobby_member(connect)
    token = await http.account("deploy")
    _, _, _ = await http.post(ROOM, token=token, json={"text": "warm the token cache"})
    await http.server.store.close()
    status, body, headers = await http.post(ROOM, token=token, json={"text": "hi"})
    assert (status, body["code"]) == (503, "internal")
    assert "Retry-After" in headers
    status, body, _ = await http.get("/healthz")
    assert (status, body["code"]) == (503, "internal")
    await http.server.store.open()  # so teardown can close it


async def test_parallel_posts_keep_seq_gapless(http: Http, connect: Clients) -> None:
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    results = await asyncio.wait_for(
        asyncio.gather(*(http.post(ROOM, token=token, json={"text": f"p{n}"}) for n in range(30))),
        TIMEOUT,
    )
    seqs = sorted(body["seq"] for status, body, _ in results if status == 200)
    assert seqs == list(range(1, 31))
    got = [(await next_event(bob, "msg", skip=PRESENCE))["seq"] for _ in range(30)]
    assert got == list(range(1, 31))


@pytest.mark.both_loops
@pytest.mark.server_config(max_connections_per_ip=2)
async def test_connections_per_address_are_limited(http: Http) -> None:
    port = http.server.http.port
    kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        data = b""
    assert data == b""  # dropped before it is answered
    writer.close()
    # The two within the limit are served; once one closes, a new one is too.
    reader0, writer0 = kept[0]
    writer0.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader0.read(), TIMEOUT)).startswith(b"HTTP/1.1 200")
    writer0.close()
    await writer0.wait_closed()
    status, _, _ = await http.get("/healthz")
    assert status == 200
    for _, w in kept[1:]:
        w.close()


async def test_connection_that_never_finishes_a_request_is_closed(
    servers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imchat.server.http import app as http_app

    monkeypatch.setattr(http_app, "KEEPALIVE_TIMEOUT", 0.5)
    server = await servers.start(http_port=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # and then nothing
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        data = b""
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data
    writer.close()


async def test_deeply_nested_json_body_is_bad_request(http: Http, connect: Clients) -> None:
    """A body nested deeper than the decoder can recurse is the caller's mistake (400), not
    an internal error with a traceback in the log; nothing is posted."""
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    deep = b'{"text": "hi", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    status, body, _ = await http.post(
        ROOM, token=token, data=deep, headers={"Content-Type": "application/json"}
    )
    assert (status, body["code"]) == (400, "bad_request"), body
    assert await pending_events(bob) == []


async def test_body_that_cannot_be_decoded_is_bad_request(http: Http, connect: Clients) -> None:
    """A body aiohttp cannot read (a Content-Encoding it does not decode to anything) is the
    caller's fault: 400 ``bad_request`` as JSON, not 503 ``internal`` with a traceback (which
    would also tell the caller to retry it)."""
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    headers = {
        "Content-Type": "text/plain",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {token}",
    }
    async with http.client.post(
        http.base + ROOM, data=b"this is not gzip", headers=headers, compress=None
    ) as response:
        assert response.content_type == "application/json"
        body = await response.json()
    assert (response.status, body["code"]) == (400, "bad_request"), body
    assert "Retry-After" not in response.headers
    assert await pending_events(bob) == []


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP response read off a raw socket: status line, headers, body (by length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    return status.encode(), headers, body


@pytest.mark.parametrize(
    "rest",
    [
        pytest.param(b"Content-Length: 40\r\n\r\n" + b'{"text": "hi', id="body-stops"),
        pytest.param(b"Content-Length: 40\r\n\r\n", id="no-body"),
        # The parser refuses the chunk framing once the handler already waits for the body.
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n", id="framing-breaks"),
    ],
)
async def test_body_that_stops_arriving_is_408(
    http: Http, connect: Clients, monkeypatch: pytest.MonkeyPatch, rest: bytes
) -> None:
    """A head and then too little body (or chunk framing that breaks after the head) is
    answered 408 within the body deadline and the connection closed; it waited for the
    client to leave, holding the connection and its handler."""
    from imchat.server.http import api

    monkeypatch.setattr(api, "BODY_TIMEOUT", 0.5, raising=False)
    reading = asyncio.Event()
    read_body = api.read_body

    async def read_body_seen(*args: Any) -> bytes:
        reading.set()
        return await read_body(*args)

    monkeypatch.setattr(api, "read_body", read_body_seen)
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    reader, writer = await asyncio.open_connection("127.0.0.1", http.server.http.port)
    head = (
        f"POST {ROOM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
    )
    writer.write(head.encode() + rest)
    await asyncio.wait_for(reading.wait(), TIMEOUT)
    if b"chunked" in rest:
        writer.write(b'5\r\n{"tex\r\nZZZ\r\n\r\n')
    status, headers, body = await _answer(reader)
    assert status.startswith(b"HTTP/1.1 408"), (status, body)
    assert headers.get("connection", "").lower() == "close"
    assert json.loads(body)["code"] == "bad_request"
    assert await pending_events(bob) == []
    writer.close()


async def test_body_in_time_is_taken(
    http: Http, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is on the whole body, not on a request that is merely read slowly: a body
    sent in pieces that arrives in time is posted."""
    from imchat.server.http import api

    monkeypatch.setattr(api, "BODY_TIMEOUT", TIMEOUT, raising=False)
    bob = await lobby_member(connect)
    token = await http.account("deploy")
    reader, writer = await asyncio.open_connection("127.0.0.1", http.server.http.port)
    body = b'{"text": "in pieces"}'
    writer.write(
        f"POST {ROOM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    await writer.drain()
    writer.write(body[5:])
    status, _, answer = await _answer(reader)
    assert status.startswith(b"HTTP/1.1 200"), answer
    assert (await next_event(bob, "msg", skip=PRESENCE))["text"] == "in pieces"
    writer.close()
