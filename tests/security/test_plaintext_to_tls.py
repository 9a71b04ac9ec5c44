"""Plain text sent to a TLS port is answered in the port's own language, then closed.

Someone who types ``http://`` for the HTTPS port used to get an empty reply (curl: "Empty
reply from server"); an ``imchat send`` or an IRC client without TLS pointed at a TLS port
saw the connection drop with no word why. Like nginx, each TLS port looks at the first
byte a connection sends: a TLS handshake record starts with 0x16, plain HTTP with a method's
letter, IRC with a command's, a native frame with its length's high byte, 0x00. What is not
TLS is answered (HTTP 400 in plain text, an IRC ``ERROR`` line, a native ``error`` frame)
and closed; nothing of it is kept, the reply is the same few bytes whatever was sent, and
the connection keeps its place against ``max_connections_per_ip`` only until it closes.
Every test runs on asyncio's loop and on uvloop (the server's default)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Servers, closed_by_server

from imchat.client import Connection, ConnectionClosed

pytestmark = pytest.mark.both_loops

HTTP_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n"


async def tls_server(servers: Servers, pki: dict[str, Path], **overrides: Any) -> Any:
    overrides.setdefault("hello_timeout", 30)
    return await servers.start(
        tls_cert=pki["cert"], tls_key=pki["key"], http_port=0, irc_tls_port=0, **overrides
    )


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` over plain TCP and read all the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            return await reader.read()
    finally:
        writer.close()


def free(server: Any) -> bool:
    """No connection holds a place against the per-address limit any more."""
    return not any(server.hub.registry.connections_per_addr.values()) and not any(
        server.http.connections_per_addr.values()
    )


async def until_free(server: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not free(server):
            await asyncio.sleep(0.01)


async def test_plain_http_to_the_https_port_gets_a_400_saying_so(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server = await tls_server(servers, pki)
    reply = await exchange(server.http.port, HTTP_REQUEST)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert b"text/plain" in head and b"Connection: close" in head
    assert b"plain HTTP request sent to the HTTPS port; use https://" in body
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    # What a user's HTTP client shows: the status and the explanation.
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{server.http.port}/healthz") as response,
    ):
        assert response.status == 400
        assert "use https://" in await response.text()
    await until_free(server)
    # TLS on the same port still works.
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"https://127.0.0.1:{server.http.port}/healthz", ssl=context) as response,
    ):
        assert response.status == 200


async def test_plain_native_client_on_the_tls_port_is_told_to_use_tls(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server = await tls_server(servers, pki)
    conn = await Connection.connect("127.0.0.1", server.port)
    with pytest.raises(ConnectionClosed) as closed:
        await conn.hello("alice")
    assert closed.value.error is not None
    assert closed.value.error["code"] == "bad_frame"
    assert "TLS" in closed.value.error["message"]
    await until_free(server)


async def test_plain_irc_client_on_the_irc_tls_port_gets_an_error_line(
    servers: Servers, pki: dict[str, Path]
) -> None:
    server = await tls_server(servers, pki)
    reply = await exchange(server.irc_ports[1], b"CAP LS 302\r\nNICK alice\r\nUSER a 0 * :A\r\n")
    lines = reply.split(b"\r\n")
    assert lines[0].startswith(b"ERROR :") and b"TLS" in lines[0], reply
    assert lines[1:] == [b""]
    await until_free(server)


@pytest.mark.parametrize("which", ["native", "irc", "http"])
async def test_a_flood_of_plaintext_is_not_kept_and_ends_the_connection(
    servers: Servers, pki: dict[str, Path], which: str
) -> None:
    """A client that keeps sending plain bytes (never reading, never closing) is cut off
    after a bounded amount: the server never waits for it to stop."""
    server = await tls_server(servers, pki)
    port = {"native": server.port, "irc": server.irc_ports[1], "http": server.http.port}[which]
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    first = b"\x00" if which == "native" else b"G"
    chunk = first + b"x" * 65535
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(OSError):  # reset or broken pipe once the server let go
                while True:
                    await loop.sock_sendall(sock, chunk)
    finally:
        sock.close()
    await until_free(server)


@pytest.mark.parametrize("which", ["native", "irc", "http"])
async def test_a_connection_that_sends_nothing_still_meets_the_deadline(
    servers: Servers, pki: dict[str, Path], which: str
) -> None:
    """Waiting for the first byte is part of the handshake, under its deadline."""
    server = await tls_server(servers, pki, hello_timeout=0.3)
    port = {"native": server.port, "irc": server.irc_ports[1], "http": server.http.port}[which]
    loop = asyncio.get_running_loop()
    for first in (b"", b"\x16"):  # nothing at all; a TLS record's first byte, then nothing
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        try:
            if first:
                await loop.sock_sendall(sock, first)
            assert await closed_by_server(sock)
        finally:
            sock.close()
    await until_free(server)
