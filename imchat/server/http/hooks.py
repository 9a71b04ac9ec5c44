"""``POST /hooks/<token>``: a service's webhook becomes a message in the hook's room.

The token in the path names the hook (only its hash is stored). A hook with a secret also
needs ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`` (GitHub's scheme; GitHub hooks
always have one), compared in constant time. The message is posted as the hook's account,
through the hub like any HTTP post, with the hook's own rate bucket. GitHub's
``X-GitHub-Delivery`` becomes the ``cid``, so a redelivery is not posted twice.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aiohttp import web

from imchat.protocol import ErrorCode
from imchat.server.auth import hash_token
from imchat.server.hookstore import Hook

from . import adapters
from .api import decode_json_body, read_body
from .errors import ApiError
from .session import run_request

if TYPE_CHECKING:
    from .app import HttpFrontend

#: Largest webhook body accepted: GitHub caps its payloads at 25 MB, but a push with many
#: commits is rarely over a few hundred KB; more is refused with 413 before it is read.
HOOK_MAX_BODY = 1024 * 1024
#: Deepest nesting a hook payload may have: more than the protocol's 32, since the payloads
#: are other systems' documents; still far from where the decoder's recursion fails.
HOOK_MAX_DEPTH = 64


def routes(front: HttpFrontend) -> list[web.RouteDef]:
    return [web.post("/hooks/{token}", Hooks(front).receive)]


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256``, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header[7:].strip().lower().encode())


class Hooks:
    def __init__(self, front: HttpFrontend) -> None:
        self.front = front

    async def receive(self, request: web.Request) -> web.Response:
        front, callers = self.front, self.front.callers
        addr, peer = callers.addr(request)
        await callers.check_blocked(addr)
        if front.hook_store is None:
            raise ApiError(ErrorCode.BAD_REQUEST, "this server's store keeps no hooks", status=404)
        hook = await front.hook_store.hook_by_token(hash_token(request.match_info["token"]))
        if hook is None:
            raise await callers.failed(addr, "no such hook")
        body = await read_body(request, HOOK_MAX_BODY)
        if hook.secret and not signature_ok(
            hook.secret, body, request.headers.get("X-Hub-Signature-256")
        ):
            raise await callers.failed(addr, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("X-GitHub-Event", "")
        if hook.kind == "github" and event == "ping":
            return web.json_response({"posted": False, "pong": True})
        payload = _payload(request, body)
        text, cid = self._message(hook, request, event, payload)
        text = adapters.fit(text or "", front.hub.config.max_text)
        if not text:
            return web.json_response({"posted": False})
        account = await callers.account(hook.user)
        if account is None:
            raise ApiError(ErrorCode.FORBIDDEN, f"the hook's account {hook.user} is gone")
        if await front.hub.store.room(hook.room) is None:
            raise ApiError(ErrorCode.NO_SUCH_ROOM, f"no room called {hook.room}")
        session = callers.session(account, addr, peer, bucket_key=f"h:{hook.id}")
        request_payload: dict[str, Any] = {"type": "say", "room": hook.room, "text": text}
        if cid is not None:
            request_payload["cid"] = cid
        reply = await run_request(front.hub, session, request_payload)
        return web.json_response({"posted": True, **reply})

    @staticmethod
    def _message(
        hook: Hook, request: web.Request, event: str, payload: Any
    ) -> tuple[str | None, str | None]:
        """The adapter's text and the cid that makes a redelivery harmless."""
        if hook.kind == "github":
            if not isinstance(payload, dict):
                raise ApiError(ErrorCode.BAD_REQUEST, "a GitHub payload is a JSON object")
            delivery = request.headers.get("X-GitHub-Delivery", "")
            cid = f"gh-{delivery}" if 0 < len(delivery) <= 60 else None
            return adapters.github(event, payload), cid
        if hook.kind == "alertmanager":
            if not isinstance(payload, dict):
                raise ApiError(ErrorCode.BAD_REQUEST, "an Alertmanager payload is a JSON object")
            return adapters.alertmanager(payload), None
        return adapters.generic(hook.template, payload), request.headers.get("Idempotency-Key")


def _payload(request: web.Request, body: bytes) -> Any:
    """JSON, or GitHub's form encoding (``payload=<JSON>``) when a hook is set up with it."""
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
        except UnicodeDecodeError:
            raise ApiError(ErrorCode.BAD_REQUEST, "the body is not UTF-8") from None
        body = (fields.get("payload") or [""])[0].encode()
    return decode_json_body(body, HOOK_MAX_DEPTH)
