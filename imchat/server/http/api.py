"""``/api/v1``: post a room message, a DM or an announcement; read a stream's history.

Each handler turns the HTTP request into the native request it stands for and hands it to
the hub through an :class:`ApiSession`; the rules live in the hub, not here. What is here is
HTTP's part: the body (JSON ``{"text": …}`` or ``text/plain``), ``Idempotency-Key`` as the
``cid``, the query string of a history read, and that a room must exist to be posted to.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from imchat.protocol import ErrorCode, ProtocolError, normalize_room
from imchat.protocol.depth import MAX_DEPTH, exceeds_depth

from .errors import ApiError
from .session import run_request

if TYPE_CHECKING:
    from .app import HttpFrontend

_decode_json = msgspec.json.Decoder().decode

#: Seconds a request's whole body may take to arrive once its head has: then 408 and the
#: connection is closed. A body that stops coming (a client that sends a head and trickles or
#: never sends the rest, chunk framing that breaks after the head) held the connection and its
#: handler until the client left. 1 MiB, the largest body taken, needs 35 KB/s to make it.
BODY_TIMEOUT = 30.0


def routes(front: HttpFrontend) -> list[web.RouteDef]:
    api = Api(front)
    return [
        web.post("/api/v1/rooms/{room}/messages", api.post_room_message),
        web.get("/api/v1/rooms/{room}/messages", api.room_history),
        web.post("/api/v1/dms/{nick}", api.post_dm),
        web.get("/api/v1/dms/{nick}", api.dm_history),
        web.post("/api/v1/announcements", api.post_announcement),
        web.get("/api/v1/announcements", api.announcement_history),
    ]


class Api:
    def __init__(self, front: HttpFrontend) -> None:
        self.front = front

    # -- posting ---------------------------------------------------------------------------

    async def post_room_message(self, request: web.Request) -> web.Response:
        session = await self.front.callers.authenticate(request)
        room = _room(request.match_info["room"])
        fields = await self._message(request, kinds=True, replies=True)
        # An HTTP caller posts without being a member, so "not a member" cannot tell it that
        # the room does not exist: say so (rooms come into being by a join).
        if await self.front.hub.store.room(room) is None:
            raise ApiError(ErrorCode.NO_SUCH_ROOM, f"no room called {room}")
        reply = await run_request(self.front.hub, session, {"type": "say", "room": room, **fields})
        return web.json_response(reply)

    async def post_dm(self, request: web.Request) -> web.Response:
        session = await self.front.callers.authenticate(request)
        fields = await self._message(request, replies=True)
        payload = {"type": "dm", "to": request.match_info["nick"], **fields}
        return web.json_response(await run_request(self.front.hub, session, payload))

    async def post_announcement(self, request: web.Request) -> web.Response:
        session = await self.front.callers.authenticate(request)
        fields = await self._message(request)
        payload = {"type": "announce", **fields}
        return web.json_response(await run_request(self.front.hub, session, payload))

    async def _message(
        self, request: web.Request, *, kinds: bool = False, replies: bool = False
    ) -> dict[str, Any]:
        """``text`` (``kind`` for a room, ``reply_to`` for a room or DM) from the body, ``cid``
        from Idempotency-Key. The values go to the hub as they came: it checks them as it
        checks a native ``say``/``dm`` (a ``reply_to`` that is no seq is ``bad_request``, one
        that names no message of the stream ``no_such_message``)."""
        body = await read_body(request, self.front.hub.config.max_frame)
        fields: dict[str, Any] = {}
        media = request.content_type
        if media == "application/json" or media.endswith("+json"):
            obj = decode_json_body(body)
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ApiError(ErrorCode.BAD_REQUEST, 'send a JSON object {"text": "…"}')
            fields["text"] = obj["text"]
            if kinds and "kind" in obj:
                fields["kind"] = obj["kind"]
            if "reply_to" in obj:
                # An announcement answers nothing (the protocol's announce has no reply_to):
                # refused, so a script does not believe it replied.
                if not replies:
                    raise ApiError(ErrorCode.BAD_REQUEST, "an announcement cannot reply_to")
                fields["reply_to"] = obj["reply_to"]
        elif media == "text/plain":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(ErrorCode.BAD_TEXT, "the body is not UTF-8") from None
            # `echo … | curl --data-binary @-` ends the text with a newline: not part of it.
            fields["text"] = text.removesuffix("\n").removesuffix("\r")
        else:
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                "send Content-Type: application/json or text/plain",
                status=415,
            )
        cid = request.headers.get("Idempotency-Key")
        if cid is not None:
            fields["cid"] = cid
        return fields

    # -- history ---------------------------------------------------------------------------

    async def room_history(self, request: web.Request) -> web.Response:
        return await self._history(request, {"room": _room(request.match_info["room"])})

    async def dm_history(self, request: web.Request) -> web.Response:
        return await self._history(request, {"with": request.match_info["nick"]})

    async def announcement_history(self, request: web.Request) -> web.Response:
        return await self._history(request, {"announcements": True})

    async def _history(self, request: web.Request, stream: dict[str, Any]) -> web.Response:
        session = await self.front.callers.authenticate(request)
        payload: dict[str, Any] = {"type": "history", **stream}
        for name in ("after", "before", "limit"):
            value = request.query.get(name)
            if value is None or value == "":
                continue
            try:
                payload[name] = int(value)
            except ValueError:
                raise ApiError(ErrorCode.BAD_REQUEST, f"{name} must be an integer") from None
        return web.json_response(await run_request(self.front.hub, session, payload))


def _room(name: str) -> str:
    try:
        return normalize_room(name)
    except ProtocolError as exc:
        raise ApiError(exc.code, exc.message) from None


def decode_json_body(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The body's JSON, or 400 ``bad_request``: also for nesting deeper than ``max_depth``,
    measured before decoding (the decoder recurses per level and would fail with an internal
    error on a body of ``[[[…`` thousands deep)."""
    if exceeds_depth(body, max_depth):
        raise ApiError(ErrorCode.BAD_REQUEST, f"the body nests deeper than {max_depth} levels")
    try:
        return _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ApiError(ErrorCode.BAD_REQUEST, "the body is not UTF-8 JSON") from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 ``frame_too_large`` beyond ``limit`` bytes (unread if the
    length says so up front), with 400 ``bad_request`` if aiohttp cannot read it (a
    ``Content-Encoding`` that does not decode): the caller's fault, not ``internal``; and
    with 408 ``bad_request`` (the connection closed) if it is not all there within
    :data:`BODY_TIMEOUT` seconds."""
    too_large = ApiError(ErrorCode.FRAME_TOO_LARGE, f"the body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.read()
    except TimeoutError:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            f"the body did not arrive within {BODY_TIMEOUT:g} s",
            status=408,
            close=True,
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except web.RequestPayloadError as exc:
        reason = str(exc).replace("400, message:", "").strip() or "unreadable"
        raise ApiError(ErrorCode.BAD_REQUEST, f"the body cannot be read: {reason}") from None
    if len(body) > limit:
        raise too_large
    return body
