"""Redis Cluster as imchat uses it: one hash tag, so every key lives on one shard.

Every atomic script reads and writes presence, seqs, history and DM queues together; Redis
Cluster runs a script only on keys of one slot. So in cluster mode the key prefix is a hash
tag (``{imchat:}``) and all of imchat's keys, and its shard channels, hash to that one slot.
Rather than redis-py's cluster client (which computes a slot per command, only to find the
same one every time), every connection is a plain one to the primary serving that slot,
asked of the seed nodes each time a connection is made. After a failover the old primary
answers ``MOVED`` (or is gone): the connection is dropped with a ``ConnectionError``, which
the node handles as losing Redis, and its next connections find the promoted replica.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection, SSLConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError

from .redis_url import ClusterTarget

#: Seconds a seed may take to answer which primary serves the slot.
ASK_TIMEOUT = 3.0


def tagged_prefix(prefix: str) -> str:
    """The prefix as a hash tag (unless it has one): every key then falls in one slot."""
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening + 2) > opening:
        return prefix
    return "{" + prefix + "}"


def prefix_slot(prefix: str) -> int:
    return int(key_slot(prefix.encode()))


async def slot_primary(target: ClusterTarget, slot: int) -> tuple[str, int]:
    """Ask the seeds, in turn, which primary serves ``slot`` now."""
    errors: list[str] = []
    for host, port in target.seeds:
        conn_class = SSLConnection if target.tls else Connection
        conn = conn_class(
            host=host,
            port=port,
            password=target.password,
            socket_connect_timeout=ASK_TIMEOUT,
            socket_timeout=ASK_TIMEOUT,
        )
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await conn.send_command("CLUSTER", "SLOTS")
            reply: Any = await conn.read_response()
        except (RedisError, OSError) as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        finally:
            await conn.disconnect()
        for start, end, primary, *_ in reply:
            if int(start) <= slot <= int(end):
                announced = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                return announced or host, int(primary[1])
        errors.append(f"{host}:{port}: slot {slot} is not served")
    raise RedisConnectionError("no Redis Cluster node says who serves imchat: " + "; ".join(errors))


class ShardConnection(Connection):
    """A connection to the primary that serves imchat's slot, looked up on every connect."""

    def __init__(self, *, cluster: ClusterTarget, slot: int, **kwargs: Any) -> None:
        self.cluster = cluster
        self.slot = slot
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        # The socket-opening step: the one hook redis-py has kept from 5.0 on.
        self.host, self.port = await slot_primary(self.cluster, self.slot)
        await super()._connect()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except MovedError as exc:
            # The slot has another primary (a failover): this one is of no more use.
            await self.disconnect()
            raise RedisConnectionError(f"imchat's slot moved ({exc})") from None


class ShardSSLConnection(ShardConnection, SSLConnection):
    pass
