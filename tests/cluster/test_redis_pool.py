"""A node's Redis client waits for a free connection instead of failing the request.

redis-py's default pool raises ``MaxConnectionsError`` for the 101st command in flight, which
the hub answers as ``internal``: hellos and disconnects failed during bursts of a few hundred
clients (benchmarks/README.md, round 5, 50,000 users over three nodes).
"""

from __future__ import annotations

import asyncio
import uuid

from imchat.server.redis_store import POOL_SIZE, connect_redis

from .cluster_support import REDIS_URL


async def test_more_commands_in_flight_than_connections_all_complete() -> None:
    client = connect_redis(REDIS_URL)
    key = f"imchat-test-pool-{uuid.uuid4().hex}"  # never written: every BLPOP waits it out
    try:
        in_flight = 3 * POOL_SIZE  # more than redis-py's default pool of 100, too
        waits = [client.blpop([key], timeout=0.2) for _ in range(in_flight)]
        assert await asyncio.gather(*waits) == [None] * in_flight
    finally:
        await client.aclose()
