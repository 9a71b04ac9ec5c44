"""On the HTTPS port, as on the native one, a connection counts against
``max_connections_per_ip`` from the moment it is accepted, before its TLS handshake, and the
handshake has the hello deadline (``hello_timeout``). Its place is freed once, whatever the
handshake's fate: done, failed, timed out. Every test runs on asyncio's loop and on uvloop
(the server's default): the TLS protocol takes the connection over in its first callback,
which the two loops make differently."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Servers, closed_by_server, stalled

pytestmark = pytest.mark.both_loops

LIMIT = 3


async def healthz(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            f"https://127.0.0.1:{port}/healthz", ssl=context, timeout=aiohttp.ClientTimeout(TIMEOUT)
        ) as response,
    ):
        return response.status


async def until(condition: Callable[[], bool]) -> None:
    """Re-check server state the client has no event for (the server sees a close after the
    client made it), until ``condition`` holds."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


async def limited_https(servers: Servers, pki: dict[str, Path]) -> Any:
    """A server whose HTTPS port allows LIMIT connections per address, with a handshake
    deadline long enough that only the server's limit closes one during a test."""
    return await servers.start(
        http_port=0,
        tls_cert=pki["cert"],
        tls_key=pki["key"],
        max_connections_per_ip=LIMIT,
        hello_timeout=30,
    )


async def test_stalled_handshakes_count_and_are_closed_beyond_the_limit(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server = await limited_https(servers, pki)
    port = server.http.port
    socks = await stalled(port, LIMIT + 2)
    try:
        # The first ones hold their places; the rest are closed at once, not after 30 s.
        extra = await asyncio.gather(*(closed_by_server(s) for s in socks[LIMIT:]))
        assert extra == [True, True]
        assert server.http.connections_per_addr["127.0.0.1"] == LIMIT
        with pytest.raises((aiohttp.ClientError, OSError)):
            await healthz(port, pki["ca"])
    finally:
        for sock in socks:
            sock.close()
    # Their places are free again once the server saw them go: a real client gets in.
    await until(lambda: not server.http.connections_per_addr)
    assert await healthz(port, pki["ca"]) == 200


async def test_a_stalled_handshake_has_the_hello_deadline(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server: Any = await servers.start(
        http_port=0, tls_cert=pki["cert"], tls_key=pki["key"], hello_timeout=0.5
    )
    (sock,) = await stalled(server.http.port, 1)
    try:
        assert await closed_by_server(sock)
    finally:
        sock.close()
    assert server.http.connections_per_addr.get("127.0.0.1", 0) == 0


async def test_a_failed_handshake_frees_its_place(servers: Servers, pki: dict[str, Path]) -> None:
    server = await limited_https(servers, pki)
    port = server.http.port
    counts = server.http.connections_per_addr
    socks = await stalled(port, LIMIT)
    try:
        # A TLS record that is no ClientHello: the handshake fails and the connection is
        # closed. (Plain HTTP is answered 400 first: tests/security/test_plaintext_to_tls.py.)
        socks[-1].sendall(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00")
        assert await closed_by_server(socks[-1])
        assert counts["127.0.0.1"] == LIMIT - 1
        # Its place is a real client's (one more would be refused).
        assert await healthz(port, pki["ca"]) == 200
    finally:
        for sock in socks:
            sock.close()
    await until(lambda: not counts)


async def test_a_connection_with_its_handshake_done_counts_once(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server = await limited_https(servers, pki)
    port = server.http.port
    counts = server.http.connections_per_addr
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    opened = [await asyncio.open_connection("127.0.0.1", port, ssl=context) for _ in range(LIMIT)]
    try:
        assert counts["127.0.0.1"] == LIMIT
        (extra,) = await stalled(port, 1)
        try:
            assert await closed_by_server(extra)
        finally:
            extra.close()
        _, writer = opened.pop()
        writer.close()
        await writer.wait_closed()
        await until(lambda: counts.get("127.0.0.1") == LIMIT - 1)
        assert await healthz(port, pki["ca"]) == 200
    finally:
        for _, writer in opened:
            writer.close()
    await until(lambda: not counts)


async def test_stalled_handshakes_are_closed_at_shutdown(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """A connection still in its handshake belongs to no HTTP handler, so aiohttp's cleanup
    does not see it: the server's stop closes it (and one whose handshake is done), at once
    rather than at its deadline, and frees their places."""
    server = await limited_https(servers, pki)
    counts = server.http.connections_per_addr
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http.port, ssl=context)
    socks = await stalled(server.http.port, 2)
    try:
        await until(lambda: counts.get("127.0.0.1") == 3)
        async with asyncio.timeout(TIMEOUT):
            await servers.stop(server)
        closed = await asyncio.gather(*(closed_by_server(s) for s in socks))
        assert closed == [True, True]
        async with asyncio.timeout(TIMEOUT):
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert await reader.read() == b""
        assert not counts
    finally:
        writer.close()
        for sock in socks:
            sock.close()
