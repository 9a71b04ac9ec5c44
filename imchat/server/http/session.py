"""An in-process session: how an HTTP request goes through the hub like any client's.

The hub takes native request payloads from it (``hub.handle_batch(session, [payload])``) and
answers through ``session.send(frame)``, so the HTTP API obeys exactly the rules, limits and
error codes of the native protocol without a second copy of them. Its user is *detached*
(``User.detached``): not online, in no room, never a recipient of events (see docs/http.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec

from imchat.protocol import HEADER_SIZE, ErrorCode, ProtocolError

from .errors import ApiError

if TYPE_CHECKING:
    from imchat.server.hub import Hub
    from imchat.server.peer import Credential, User
    from imchat.server.ratelimit import TokenBucket

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class ApiSession:
    """One HTTP request's :class:`~imchat.server.peer.Peer`: it collects the replies the hub
    sends it. Never registered with the hub (it lives for one request), so it is no
    recipient of anything but its own replies."""

    __slots__ = (
        "addr",
        "bucket",
        "closing",
        "credential",
        "guest_hold",
        "last_rx",
        "opened",
        "peer",
        "replies",
        "user",
    )

    def __init__(self, user: User, bucket: TokenBucket, addr: str, peer: str) -> None:
        self.user: User | None = user
        self.bucket = bucket
        self.addr = addr
        self.peer = peer
        self.credential: Credential | None = None
        self.guest_hold: float | None = None
        self.closing = False
        self.opened = self.last_rx = time.monotonic()
        self.replies: list[dict[str, Any]] = []

    @property
    def read_bucket(self) -> TokenBucket:
        """An API request's reads spend its caller's message bucket: each request is a new
        session, so a bucket of its own would bound nothing."""
        return self.bucket

    def send(self, frame: bytes) -> None:
        self.replies.append(_decode(frame[HEADER_SIZE:]))

    def send_error(self, error: ProtocolError) -> None:
        self.replies.append({"type": "error", "code": str(error.code), "message": error.message})

    def fail(self, error: ProtocolError) -> None:
        self.send_error(error)
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def flush(self) -> None:
        pass  # replies are read by run_request as soon as the hub is done

    def pause_reading(self) -> None:
        pass

    def abort(self) -> None:
        self.closing = True

    def wait_written(self) -> asyncio.Future[bool]:
        """Nothing is ever queued for it but its replies, which ``run_request`` takes at
        once: done. (The trust-core branch adds this to ``Peer``.)"""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.set_result(not self.closing)
        return future

    @property
    def nick(self) -> str:
        return self.user.nick if self.user is not None else "-"


async def run_request(hub: Hub, session: ApiSession, payload: dict[str, Any]) -> dict[str, Any]:
    """Hand one native request to the hub; its ``ok`` body, or :class:`ApiError`."""
    await hub.handle_batch(session, [_encode(payload)])
    if not session.replies:
        # The hub answers every request; no answer means the session was closed under it.
        raise ApiError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
    reply = session.replies[0]
    if reply.get("type") == "error":
        code = str(reply["code"])
        rate = session.bucket.rate
        # The error's own hint if it has one (a room-creation budget); else the session's
        # bucket holds a whole token again after 1/rate seconds.
        hint = reply.get("retry_after")
        retry_after: float | None = float(hint) if isinstance(hint, int | float) else None
        if retry_after is None and code == ErrorCode.RATE_LIMITED and rate > 0:
            retry_after = 1 / rate
        raise ApiError(code, str(reply.get("message", "")), retry_after=retry_after)
    reply.pop("type", None)
    reply.pop("id", None)
    return reply
