"""Typed readings of redis-py replies, so the Redis backend type-checks without ignores.

redis-py annotates replies as ``bytes | str | …`` whatever the client's settings; ours never
decode responses (``decode_responses`` is off: payloads are bytes we forward as they are), so
every reply is bytes. These helpers turn a reply into the type it has, and check it.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub


def blob(reply: object) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode()
    raise TypeError(f"expected a Redis string, got {type(reply).__name__}")


def text(reply: object) -> str:
    """A string reply as text; None (a missing key or field) is the empty string."""
    if reply is None:
        return ""
    return blob(reply).decode()


def blobs(reply: object) -> list[bytes]:
    """An array (or set) reply of strings as bytes."""
    if not isinstance(reply, Iterable):
        raise TypeError(f"expected a Redis array, got {type(reply).__name__}")
    return [blob(item) for item in reply]


def texts(reply: object) -> list[str]:
    return [item.decode() for item in blobs(reply)]


async def lrem(redis: Redis, key: str, count: int, value: bytes) -> int:
    """LREM with a bytes value. redis-py's annotation wants str; our payloads are UTF-8 JSON,
    which redis-py encodes back to the same bytes."""
    return int(await redis.lrem(key, count, value.decode()))


async def lpush(redis: Redis, key: str, *values: bytes) -> None:
    await redis.lpush(key, *values)


async def close_pubsub(pubsub: PubSub) -> None:
    """``PubSub.aclose``, which redis-py leaves unannotated."""
    await pubsub.aclose()  # type: ignore[no-untyped-call]
