"""Helpers for the security tests: a raw frame client and server-state probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from imchat.protocol import FrameDecoder, encode_frame, encode_message
from imchat.server import ChatServer

TIMEOUT = 5.0

StartServer = Callable[..., Awaitable[ChatServer]]


class Raw:
    """A bare connection speaking frames, every frame in arrival order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(16 * 1024 * 1024)
        self.eof = False

    @classmethod
    async def open(cls, port: int, *, ssl_context: ssl.SSLContext | None = None) -> Raw:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ssl_context), TIMEOUT
        )
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode_message(message))

    def send_payload(self, payload: bytes) -> None:
        self.writer.write(encode_frame(payload))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame; ``EOFError`` once the server closed."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.decoder.next_frame()
            if payload is not None:
                message = json.loads(payload)
                assert isinstance(message, dict)
                return message
            if self.eof:
                raise EOFError
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame within timeout")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except (ConnectionError, ssl.SSLError):
                data = b""
            if data:
                self.decoder.receive_data(data)
            else:
                self.eof = True

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` with an id and return the frame carrying that id."""
        message = {"id": "r", **message}
        self.send(message)
        while True:
            frame = await self.recv()
            if frame.get("id") == message["id"]:
                return frame

    async def hello(self, nick: str, **fields: Any) -> dict[str, Any]:
        return await self.request({"type": "hello", "proto": 1, "nick": nick, **fields})

    async def until_closed(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every frame until the server closes; fails if it does not close in time."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(await self.recv(max(deadline - time.monotonic(), 0.001)))
            except EOFError:
                return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = TIMEOUT
) -> None:
    """Re-check server state until ``predicate`` holds, for state that has no event to await
    (such as a fan-out's tables settling after connections vanished). Prefer an event."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def baseline(server: ChatServer) -> dict[str, int]:
    """What must return to zero once every client is gone (read through public interfaces)."""
    hub = server.hub
    assert hub is not None
    fanout = server.fanout
    return {
        "sessions": len(hub.sessions),
        "addresses": len(hub.connections_per_addr),
        "users": len(await fanout.online()),
        "room_members": sum((await fanout.member_counts()).values()),
        "fanout_sessions": fanout.session_count(),
    }
