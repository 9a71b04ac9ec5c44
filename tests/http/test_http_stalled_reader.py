"""A client that sends requests and never reads the answers is cut off once the server's
writes to it have made no progress for ``WRITE_STALL_TIMEOUT`` seconds.

aiohttp has no write deadline, and the keep-alive timeout does not run while a request is
being answered: a client that pipelined requests (``GET /metrics`` needs no token) with its
receive window shut held its connection, the handler waiting on it and the answers owed for
good. Tried on the HTTPS port: 102,000 requests accepted in 40 s, 3.9 MB queued in the
server's socket, the connection still open. Sockets now get ``--socket-send-buffer`` as
native ones do, and a connection whose writes stay paused that long is aborted.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Servers

from imchat.server.http import app as http_app

pytestmark = pytest.mark.both_loops

REQUESTS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_client_that_never_reads_is_cut_off(
    servers: Servers, pki: dict[str, Path], tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_app, "WRITE_STALL_TIMEOUT", 0.5)
    overrides: dict[str, Any] = {"tls_cert": pki["cert"], "tls_key": pki["key"]} if tls else {}
    server = await servers.start(http_port=0, **overrides)
    context = ssl.create_default_context(cafile=str(pki["ca"])) if tls else None
    # A small read limit: the client's transport stops reading at once, as a client whose
    # receive window is shut does.
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.http.port, ssl=context, limit=1024
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ConnectionError):
                while True:
                    writer.write(REQUESTS)
                    await writer.drain()
                    if writer.is_closing():
                        raise ConnectionResetError("closed by the server")
    finally:
        writer.close()
    async with asyncio.timeout(TIMEOUT):
        while any(server.http.connections_per_addr.values()):
            await asyncio.sleep(0.01)
