"""Several addresses of one chat service (the nodes of a cluster), tried in turn.

``--host a:7667,b:7667`` names one service reachable at two nodes: a client connects to the
first that answers and, when its connection is lost, tries the next one first. The first
address names the service: a guest identity's ``resume`` secret is kept under it, so the
identity moves with the client from node to node.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Sequence
from dataclasses import dataclass

from .connection import Connection

#: Waits before each new round over the servers after a connection was lost (about 8 s in
#: all: a node restarting, or the next one still starting up).
REDIAL_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class BadServerList(ValueError):
    """``--host`` could not be read; the message says which part, in one line."""


def parse_servers(spec: str, default_port: int) -> tuple[Endpoint, ...]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address, comma-separated."""
    servers = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        host, port = part, str(default_port)
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest.removeprefix(":") or port
        elif part.count(":") == 1:
            host, port = part.split(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadServerList(f"not a server address: {part!r} (host, host:port, [v6]:port)")
        servers.append(Endpoint(host, int(port)))
    if not servers:
        raise BadServerList("no server address given")
    return tuple(servers)


async def connect_first(
    servers: Sequence[Endpoint],
    *,
    ssl: ssl_module.SSLContext | None = None,
    start: int = 0,
    timeout: float = 10.0,
) -> tuple[Connection, int]:
    """Connect to the first server that answers, from ``start`` on; its index.

    The connection is named after ``servers[0]`` (see the module docstring). The error of the
    last server tried is raised when none answers.
    """
    error: OSError | TimeoutError | None = None
    for step in range(len(servers)):
        index = (start + step) % len(servers)
        server = servers[index]
        try:
            conn = await Connection.connect(server.host, server.port, ssl=ssl, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            error = exc
            continue
        conn.host, conn.port = servers[0].host, servers[0].port
        return conn, index
    assert error is not None
    raise error


async def redial(
    servers: Sequence[Endpoint],
    *,
    ssl: ssl_module.SSLContext | None = None,
    start: int = 0,
    delays: Sequence[float] = REDIAL_DELAYS,
) -> tuple[Connection, int]:
    """After losing a connection: :func:`connect_first` from ``start`` on, and again over
    every server after each of ``delays``; the last error if none ever answers."""
    for delay in delays:
        try:
            return await connect_first(servers, ssl=ssl, start=start)
        except (OSError, TimeoutError):
            await asyncio.sleep(delay)
    return await connect_first(servers, ssl=ssl, start=start)
