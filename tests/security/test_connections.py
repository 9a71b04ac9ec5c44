"""Connections are counted at accept, before TLS; the accept queue holds a reconnect storm."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import closed_by_server, stalled
from secfixtures import start_server_fixture  # noqa: F401
from secutil import StartServer, wait_for

from imchat.client import Connection
from imchat.client.tls import client_context
from imchat.server.listener import DEFAULT_BACKLOG, effective_backlog
from imchat.server.ratelimit import address_key

TIMEOUT = 5.0


async def test_stalled_tls_handshakes_count_against_the_address_limit(
    start_server: StartServer, pki: dict[str, Path]
) -> None:
    server = await start_server(
        tls_cert=pki["cert"], tls_key=pki["key"], max_connections_per_ip=5, hello_timeout=30
    )
    socks = await stalled(server.port, 8)
    try:
        # The first five hold their places; the rest are closed at once, not after 30 s.
        extra = await asyncio.gather(*(closed_by_server(s) for s in socks[5:]))
        assert extra == [True, True, True]
        assert server.hub is not None
        assert server.hub.connections_per_addr["127.0.0.1"] == 5
        with pytest.raises((ConnectionError, OSError)):
            conn = await Connection.connect("127.0.0.1", server.port, ssl=client_context(pki["ca"]))
            await conn.hello("alice")
    finally:
        for sock in socks:
            sock.close()
    # Their places are free again: a real client gets in.
    conn = await wait_for_room(server.port, pki["ca"])
    assert (await conn.hello("alice"))["type"] == "welcome"
    await conn.close()


async def wait_for_room(port: int, ca: Path) -> Connection:
    """Connect once the server has noticed the stalled sockets closing (an event, polled)."""
    for _ in range(100):
        with contextlib.suppress(ConnectionError, OSError):
            conn = await Connection.connect("127.0.0.1", port, ssl=client_context(ca))
            with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
                await conn.request("ping")
                return conn
            conn.abort()
        await asyncio.sleep(0.05)
    raise AssertionError("the address limit was never released")


async def test_a_handshake_has_a_deadline(start_server: StartServer, pki: dict[str, Path]) -> None:
    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"], hello_timeout=0.5)
    (sock,) = await stalled(server.port, 1)
    try:
        assert await closed_by_server(sock)
    finally:
        sock.close()
    assert server.hub is not None
    assert server.hub.connections_per_addr.get("127.0.0.1", 0) == 0


async def test_plain_tcp_over_the_limit_is_told_rate_limited(start_server: StartServer) -> None:
    server = await start_server(max_connections_per_ip=2)
    socks = await stalled(server.port, 3)
    try:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(socks[2], 4096), TIMEOUT)
        assert b'"rate_limited"' in data
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_listen_backlog_holds_a_reconnect_storm(start_server: StartServer) -> None:
    server = await start_server()
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
    ).stdout
    # For a listening socket, ss shows the backlog in the Send-Q column.
    send_q = {int(line.split()[2]) for line in out.splitlines() if line.strip()}
    assert send_q == {effective_backlog(DEFAULT_BACKLOG)[0]}
    assert effective_backlog(DEFAULT_BACKLOG)[0] > 100  # asyncio's default


async def test_a_plain_tcp_connection_is_opened_without_a_task(start_server: StartServer) -> None:
    """A connect storm: a task per accepted connection (made, stepped twice, its done
    callback run) cost a tenth of the accept path. Plain TCP needs no handshake to wait
    for, so the transport is made in the accept callback; it is counted, served and, when
    it goes, released the same."""
    server = await start_server(max_connections_per_ip=2)
    assert server.hub is not None
    spawned: list[object] = []
    spawn = server.hub.registry.spawn

    def counting(coro: object) -> None:
        spawned.append(coro)
        spawn(coro)  # type: ignore[arg-type]

    server.hub.registry.spawn = counting
    socks = await stalled(server.port, 2)
    try:
        await wait_for(lambda: len(server.hub.sessions) == 2)  # type: ignore[union-attr]
        assert spawned == []
        assert server.hub.connections_per_addr.get("127.0.0.1") == 2
        conn = await Connection.connect("127.0.0.1", server.port)
        with pytest.raises(Exception, match="rate_limited"):
            await conn.hello("third")
        await conn.close()
    finally:
        for sock in socks:
            sock.close()
    await wait_for(lambda: not server.hub.connections_per_addr)  # type: ignore[union-attr]


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_accepted_connection_has_its_listeners_family(
    start_server: StartServer, host: str
) -> None:
    """The listener wraps each accepted descriptor itself (round 9: ``socket.accept``
    converted the listening socket's family and type to enums for every connection): the
    connection is a stream socket of the listener's family, counted under its address."""
    import socket

    server = await start_server(host=host)
    assert server.hub is not None
    conn = await Connection.connect(host, server.port)
    try:
        assert (await conn.hello("alice"))["type"] == "welcome"
        (session,) = server.hub.sessions
        sock = session.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        assert (sock.family, sock.type) == (family, socket.SOCK_STREAM)
        assert sock.getpeername()[0] == host
        assert server.hub.connections_per_addr == {address_key(host): 1}  # IPv6: its /64
    finally:
        await conn.close()
    await wait_for(lambda: not server.hub.connections_per_addr)  # type: ignore[union-attr]
