"""Every TLS port treats a connection in its handshake alike: counted against
``max_connections_per_ip`` from its accept (the IRC TLS port counted it only once the
handshake was done), and closed when the server stops, at once, as no request of its is
running (the IRC TLS port left it open until its deadline; the native one waited the
shutdown grace for it, logging it as a stuck request). The HTTPS port is in
``tests/http/test_http_tls_handshakes.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import Servers, closed_by_server, stalled

pytestmark = pytest.mark.both_loops

LIMIT = 3


async def tls_server(servers: Servers, pki: dict[str, Path]) -> Any:
    """Native TLS and IRC TLS ports allowing LIMIT connections per address, with a
    handshake deadline long enough that only the limit or the stop closes one in a test."""
    return await servers.start(
        tls_cert=pki["cert"],
        tls_key=pki["key"],
        irc_tls_port=0,
        max_connections_per_ip=LIMIT,
        hello_timeout=30,
    )


def port_of(server: Any, which: str) -> int:
    return int(server.port if which == "native" else server.irc_ports[1])


@pytest.mark.parametrize("which", ["native", "irc"])
async def test_stalled_handshakes_count_from_accept(
    servers: Servers, pki: dict[str, Path], which: str
) -> None:
    server = await tls_server(servers, pki)
    socks = await stalled(port_of(server, which), LIMIT + 2)
    try:
        extra = await asyncio.gather(*(closed_by_server(s) for s in socks[LIMIT:]))
        assert extra == [True, True]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("which", ["native", "irc"])
async def test_stalled_handshakes_are_closed_at_stop(
    servers: Servers, pki: dict[str, Path], which: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tls_server(servers, pki)
    socks = await stalled(port_of(server, which), 2)
    try:
        await servers.stop(server)
        closed = await asyncio.gather(*(closed_by_server(s) for s in socks))
        assert closed == [True, True]
        assert not server.hub.registry.connections_per_addr
    finally:
        for sock in socks:
            sock.close()
    stuck = [r for r in caplog.records if "still running at shutdown" in r.getMessage()]
    assert not stuck, "a handshake was waited for as a running request"
