"""A request's head is bounded as a whole, not only line by line.

aiohttp's defaults allow 128 header fields of 8190 bytes each: a head of about 1 MiB, which a
WebSocket session (``/ws``) keeps for its whole life (the request it was upgraded from holds
it, twice: raw and decoded). Measured on the HTTPS port, 60 such sessions from one address
added 147 MB to the server's RSS (2.4 MB each), so the 128 an address may hold pinned about
300 MB. The server allows 48 fields (``MAX_HEADERS``) (still of up to 8190 bytes: one big
``Cookie`` is fine), which bounds a head, and so what a session can pin with it, to under
400 KiB. One field more is refused with aiohttp's 400 and the connection closed.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Servers

pytestmark = pytest.mark.both_loops


async def ask(port: int, headers: int, context: ssl.SSLContext | None) -> bytes:
    """GET /healthz with ``headers`` fields in all (``Host`` and ``Connection`` included),
    each of the others 8000 bytes long; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        fields = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 8000) for n in range(headers - 2))
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields + b"\r\n"
        )
        async with asyncio.timeout(TIMEOUT):
            return (await reader.read()).split(b"\r\n", 1)[0]
    finally:
        writer.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_head_with_more_fields_than_the_bound_is_refused(
    servers: Servers, pki: dict[str, Path], tls: bool
) -> None:
    overrides: dict[str, Any] = {"tls_cert": pki["cert"], "tls_key": pki["key"]} if tls else {}
    server = await servers.start(http_port=0, **overrides)
    context = ssl.create_default_context(cafile=str(pki["ca"])) if tls else None
    # 48 fields of up to 8190 bytes: under 400 KiB.
    assert await ask(server.http.port, 48, context) == b"HTTP/1.1 200 OK"
    refused = await ask(server.http.port, 49, context)
    assert refused.startswith(b"HTTP/1.0 400 "), refused
