"""Fixtures for the HTTP face: a real server with ``http_port=0`` and an aiohttp client.

Test modules import them (``from httpfixtures import http_fixture``); not a conftest.py, so
``from conftest import …`` keeps finding the suite-wide one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Servers, admin_token

from imchat.server import accounts


@dataclass
class Http:
    """A client of one server's HTTP face."""

    client: aiohttp.ClientSession
    server: Any
    base: str
    admin: str

    async def account(self, nick: str, *, admin: bool = False) -> str:
        """Create an account (token-only) and return a token for it."""
        await accounts.add_user(self.server.store, nick, None, admin=admin)
        return await accounts.create_token(self.server.store, nick, "test")

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, Any]:
        """(status, JSON body, headers) of one request."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.client.request(
            method, self.base + path, headers=sent, timeout=aiohttp.ClientTimeout(TIMEOUT), **kwargs
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body, response.headers

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.call("POST", path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.call("GET", path, **kwargs)


async def start_http(servers: Servers, **overrides: Any) -> Any:
    return await servers.start(http_port=0, **overrides)


@pytest.fixture(name="http")
async def http_fixture(request: pytest.FixtureRequest, servers: Servers) -> AsyncIterator[Http]:
    """A server with its HTTP face on (``@pytest.mark.server_config`` tunes it)."""
    marker = request.node.get_closest_marker("server_config")
    server = await start_http(servers, **(marker.kwargs if marker else {}))
    async with aiohttp.ClientSession() as client:
        yield Http(
            client, server, f"http://127.0.0.1:{server.http.port}", admin_token(servers.data_dir)
        )
