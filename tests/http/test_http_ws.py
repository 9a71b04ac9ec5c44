"""``/ws``: the native protocol over WebSocket, with its rules and its slow-consumer cut."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Clients, join, next_event
from httpfixtures import Http, http_fixture  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)
CLOSE, CLOSED, ERROR = aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR


class Ws:
    """A WebSocket client speaking the native JSON objects."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        message = await self.ws.receive(timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        obj = json.loads(message.data)
        assert isinstance(obj, dict)
        return obj

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        while True:
            frame = await self.recv()
            if frame.get("id") == message.get("id"):
                return frame

    async def until_closed(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every message left, and the close code."""
        frames: list[dict[str, Any]] = []
        while True:
            message = await self.ws.receive(TIMEOUT)
            if message.type == aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(message.data))
            elif (
                message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                or message.type == aiohttp.WSMsgType.ERROR
            ):
                return frames, self.ws.close_code


async def open_ws(http: Http) -> Ws:
    url = http.base.replace("http", "ws", 1) + "/ws"
    ws = await http.client.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT))
    return Ws(ws)


async def test_ws_session_talks_with_native_clients(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    web = await open_ws(http)
    welcome = await web.request({"type": "hello", "proto": 1, "nick": "alice", "id": 1})
    assert (welcome["type"], welcome["nick"], welcome["id"]) == ("welcome", "alice", 1)
    joined = await web.request({"type": "join", "room": "lobby", "id": "j"})
    assert joined["type"] == "ok" and sorted(joined["members"]) == ["alice", "bob"]
    assert (await next_event(bob, "joined"))["nick"] == "alice"
    ok = await web.request({"type": "say", "room": "lobby", "text": "from a browser", "id": 2})
    assert ok["type"] == "ok" and ok["seq"] == 1
    msg = await next_event(bob, "msg")
    assert (msg["from"], msg["text"]) == ("alice", "from a browser")
    await bob.request("say", room="lobby", text="hello browser")
    await next_event(bob, "msg")
    while (event := await web.recv())["type"] != "msg" or event["from"] != "bob":
        pass
    assert event["text"] == "hello browser"
    # The same rules: a request before... an unknown type, a bad room.
    error = await web.request({"type": "fly", "id": 3})
    assert (error["type"], error["code"]) == ("error", "unknown_type")
    error = await web.request({"type": "say", "room": "Bad Room", "text": "x", "id": 4})
    assert error["code"] == "bad_room"
    await web.ws.close()
    assert (await next_event(bob, "parted"))["nick"] == "alice"


async def test_ws_requires_hello_and_accounts(http: Http) -> None:
    web = await open_ws(http)
    error = await web.request({"type": "say", "room": "lobby", "text": "x", "id": 1})
    assert error["code"] == "hello_required"
    error = await web.request(
        {"type": "hello", "proto": 1, "nick": "admin", "token": "no", "id": 2}
    )
    assert error["code"] == "auth_failed"
    frames, _ = await web.until_closed()  # auth_failed on hello is fatal
    assert frames == []
    web = await open_ws(http)
    welcome = await web.request(
        {"type": "hello", "proto": 1, "nick": "admin", "token": http.admin, "id": 1}
    )
    assert welcome["admin"] is True


async def test_ws_bad_input_is_fatal(http: Http) -> None:
    web = await open_ws(http)
    await web.ws.send_str("{not json")
    frames, _ = await web.until_closed()
    assert [f["code"] for f in frames] == ["bad_frame"]
    web = await open_ws(http)
    await web.ws.send_bytes(b'{"type":"ping"}')
    frames, _ = await web.until_closed()
    assert [f["code"] for f in frames] == ["bad_frame"]


@pytest.mark.server_config(max_frame=1024)
async def test_ws_message_over_max_frame_closes_with_1009(http: Http) -> None:
    web = await open_ws(http)
    await web.send({"type": "ping", "pad": "x" * 2000})
    frames, code = await web.until_closed()
    assert (frames, code) == ([], aiohttp.WSCloseCode.MESSAGE_TOO_BIG)


async def test_ws_gets_shutting_down(http: Http, servers: Any) -> None:
    web = await open_ws(http)
    await web.request({"type": "hello", "proto": 1, "nick": "alice", "id": 1})
    stopping = asyncio.create_task(servers.stop(http.server))
    frames, _ = await web.until_closed()
    await asyncio.wait_for(stopping, TIMEOUT * 2)
    assert frames[-1]["code"] == "shutting_down"


MAX_BUFFER = 64 * 1024
TEXT = "x" * 3900


@pytest.mark.server_config(max_buffer=MAX_BUFFER, rate=0)
async def test_ws_client_that_never_reads_is_cut_off(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    sender = await connect("sender")
    await join(sender, "lobby")
    slow = await open_ws(http)
    await slow.request({"type": "hello", "proto": 1, "nick": "slow", "id": 1})
    await slow.request({"type": "join", "room": "lobby", "id": 2})
    # From here on `slow` reads nothing: its client stops pulling from the socket once its
    # own small queue is full, and then the kernel buffers fill.

    gone = asyncio.Event()
    seen: list[int] = []
    got_last = asyncio.Event()

    async def read_bob() -> None:
        while True:
            event = await bob.next_event(TIMEOUT * 4)
            if event["type"] == "msg":
                seen.append(event["seq"])
                if event["text"] == "last":
                    got_last.set()
            elif event["type"] == "offline" and event["nick"] == "slow":
                gone.set()

    async def cuts() -> float:
        """The server's count of slow-consumer cuts, from /metrics (the event we wait on)."""
        async with http.client.get(http.base + "/metrics") as response:
            for family in text_string_to_metric_families(await response.text()):
                if family.name == "imchat_slow_consumer_cuts":
                    return float(family.samples[0].value)
        raise AssertionError("no imchat_slow_consumer_cuts in /metrics")

    reader = asyncio.create_task(read_bob())
    before = await cuts()
    sent = 0
    try:
        while await cuts() == before:
            assert sent < 256 * 1024 * 1024, "the slow WebSocket client was never cut off"
            await asyncio.wait_for(
                asyncio.gather(*(sender.request("say", room="lobby", text=TEXT) for _ in range(8))),
                TIMEOUT,
            )
            sent += 8 * len(TEXT)
        # The slow client reads at last (within the close grace): whole messages, in order,
        # ending with slow_consumer.
        frames, _ = await slow.until_closed()
        assert frames and frames[-1]["code"] == "slow_consumer", frames[-1:]
        seqs = [f["seq"] for f in frames[:-1] if f["type"] == "msg"]
        assert seqs == list(range(1, len(seqs) + 1))
        assert all(f["type"] != "error" for f in frames[:-1])
        await asyncio.wait_for(gone.wait(), TIMEOUT)
        # bob kept up the whole time: every message reached him, in order.
        last = (await sender.request("say", room="lobby", text="last"))["seq"]
        await asyncio.wait_for(got_last.wait(), TIMEOUT)
        assert seen == list(range(1, last + 1))
    finally:
        reader.cancel()


@pytest.mark.server_config(idle_timeout=0.5)
async def test_ws_session_that_stays_silent_gets_idle_timeout(http: Http) -> None:
    web = await open_ws(http)
    await web.request({"type": "hello", "proto": 1, "nick": "alice", "id": 1})
    frames, _ = await web.until_closed()
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["idle_timeout"]


async def test_ws_wait_written(http: Http) -> None:
    """``wait_written`` (what DM queues wait on): True once sent, False once closed."""
    web = await open_ws(http)
    await web.request({"type": "hello", "proto": 1, "nick": "alice", "id": 1})
    [session] = [s for s in http.server.hub.sessions if s.nick == "alice"]
    session.send(b"\x00\x00\x00\x0f" + b'{"type":"test"}')
    assert await asyncio.wait_for(session.wait_written(), TIMEOUT) is True
    while (frame := await web.recv())["type"] == "online":
        pass
    assert frame == {"type": "test"}
    await web.ws.close()
    await asyncio.wait_for(http.server.hub.all_closed(), TIMEOUT)  # alice's was the only one
    assert await session.wait_written() is False
