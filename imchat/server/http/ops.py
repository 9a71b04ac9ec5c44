"""Operations: ``/healthz`` (ready only when the store answers) and ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from imchat.protocol import ErrorCode

from .errors import error_response

if TYPE_CHECKING:
    from .app import HttpFrontend

log = logging.getLogger(__name__)

#: How long the store may take to answer before the server is reported not ready.
HEALTH_TIMEOUT = 2.0


def routes(front: HttpFrontend) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        if front.closing:
            return error_response(ErrorCode.SHUTTING_DOWN, "server is shutting down")
        if not getattr(front.hub.fanout, "available", True):
            return error_response(ErrorCode.INTERNAL, "the cluster store is unreachable")
        try:
            await asyncio.wait_for(front.ping_store(), HEALTH_TIMEOUT)
        except Exception as exc:
            log.warning("health check: the store did not answer: %s", exc or type(exc).__name__)
            return error_response(ErrorCode.INTERNAL, "the store does not answer")
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(front.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]
