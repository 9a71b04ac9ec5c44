"""Replies read straight from redis-py's hiredis reader: the node's hot paths over Redis.

Two readers, for the two things a node does per message. The subscription:
redis-py's ``PubSub.get_message`` spends, on every message, a timeout context, three layers
of response parsing and a dict built for the caller: several times what the node then does
with the envelope. With hiredis installed, the subscription's connection already parses with
a ``hiredis.Reader``; :func:`push_subscription` then takes the connection's socket over with
a protocol of its own (:class:`PushedSubscription`) that feeds each chunk the socket gives
straight to that reader and hands every message it completes to the node in the same
callback: no ``StreamReader`` buffer to copy through, no task woken per read.
:class:`RawSubscription` (awaiting ``read_from_socket``, then taking every message that read
brought at once) is the fallback where the transport cannot be taken over. Without hiredis
(an optional extra), both give None and the node reads with ``get_message``. The ordered
pipeline (appends): :func:`raw_execute` sends a batch recorded on a redis-py ``Pipeline``
and reads its replies from the same reader, with one timeout for the batch instead of one
per reply.

This reaches into redis-py's connection (``_parser``, its ``_reader`` and
``read_from_socket``; the connection's ``_reader`` and ``_writer`` streams), which every
redis-py from 5.0 to 8.x has; anything else found there gives None too, and the slower
public path is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

try:  # private to redis-py: checked, not trusted (raw_subscription)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover - redis-py without its hiredis parser module
    _AsyncHiredisParser = None  # type: ignore[assignment,misc]
    NOT_ENOUGH_DATA = object()

#: What the reader's ``gets`` gives while it holds no complete message.
NO_MESSAGE: Any = NOT_ENOUGH_DATA

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub


def parsed(gets: Callable[[], Any]) -> Iterator[list[bytes]]:
    """What a ``hiredis.Reader``'s ``gets`` completes, message by message, until it needs
    more data; a reply error (an exception) is raised."""
    while True:
        message = gets()
        if message is NOT_ENOUGH_DATA:
            return
        if isinstance(message, BaseException):
            raise message
        yield message


class RawSubscription:
    """Pub/sub messages as hiredis parses them: ``[kind, channel, data]`` lists of bytes."""

    def __init__(self, gets: Callable[[], Any], fill: Callable[[], Awaitable[Any]]) -> None:
        self._gets = gets
        #: Reads once from the socket into the reader; raises ConnectionError at EOF.
        self.fill = fill

    def messages(self) -> Iterator[list[bytes]]:
        """Every message already read, parsed; a reply error (an exception) is raised."""
        return parsed(self._gets)


class PushedSubscription(asyncio.Protocol):
    """The subscription's socket read by this protocol instead of redis-py's stream.

    Each chunk the transport delivers is fed to the connection's ``hiredis.Reader`` and
    ``on_data`` is called at once, in the same callback, to take the messages it completed
    (:meth:`messages`). What ends the subscription (the connection lost or closed by Redis,
    an exception from ``on_data``) becomes the result of :attr:`ended`, and nothing more is
    handed on; so does :meth:`stop`, with None. redis-py keeps writing to the connection
    (``PING``, ``UNSUBSCRIBE``) through its ``StreamWriter``: flow control and the loss of
    the connection are passed on to the protocol it was made with, so its writes, drains
    and ``disconnect`` behave as before.
    """

    def __init__(self, reader: Any, on_data: Callable[[], None], original: Any) -> None:
        #: The reader's ``gets``: the next message fed so far, ``NOT_ENOUGH_DATA`` if none,
        #: a reply error as an exception (:meth:`messages` raises it).
        self.gets: Callable[[], Any] = reader.gets
        self._feed = reader.feed
        self._on_data = on_data
        self._original = original
        #: The reason the subscription ended: an exception, or None (:meth:`stop`).
        self.ended: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )

    def messages(self) -> Iterator[list[bytes]]:
        """Every message fed so far, parsed; a reply error (an exception) is raised."""
        return parsed(self.gets)

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return  # ended: what still arrives is not acted on
        try:
            self._feed(data)
            self._on_data()
        except Exception as exc:  # a protocol error, or the node's: this subscription ends
            self._end(exc)

    def eof_received(self) -> bool | None:
        self._end(ConnectionError("Redis closed the subscription's connection"))
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ConnectionError(f"the subscription's connection was lost: {exc or 'closed'}"))
        self._original.connection_lost(exc)

    def pause_writing(self) -> None:
        self._original.pause_writing()

    def resume_writing(self) -> None:
        self._original.resume_writing()

    def poll(self) -> None:
        """Call ``on_data`` for what the reader already holds, as if a chunk had come."""
        self.data_received(b"")

    def stop(self) -> None:
        """Hand nothing more on (the node stopped reading this subscription)."""
        self._end(None)

    def _end(self, reason: BaseException | None) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


def _hiredis_parser(connection: Any) -> Any:
    """The connection's redis-py hiredis parser, or None (another parser, or no hiredis)."""
    parser = getattr(connection, "_parser", None)
    if _AsyncHiredisParser is None or not isinstance(parser, _AsyncHiredisParser):
        return None
    return parser


def push_subscription(pubsub: PubSub, on_data: Callable[[], None]) -> PushedSubscription | None:
    """Take a subscribed ``pubsub``'s socket over (:class:`PushedSubscription`), or None.

    ``on_data`` is called once per chunk from the socket and takes the messages with
    :meth:`PushedSubscription.messages`; what redis-py had already read from the socket is in
    the reader, for the caller's first :meth:`PushedSubscription.poll`.
    """
    connection = pubsub.connection
    parser = _hiredis_parser(connection)
    if parser is None:
        return None
    reader = getattr(parser, "_reader", None)
    stream = getattr(connection, "_reader", None)
    writer = getattr(connection, "_writer", None)
    if (
        reader is None
        or not isinstance(stream, asyncio.StreamReader)
        or not isinstance(writer, asyncio.StreamWriter)
    ):
        return None
    buffered = getattr(stream, "_buffer", None)
    # Reads as well as writes (uvloop's transports are not asyncio.Transport subclasses).
    transport = cast(asyncio.Transport, writer.transport)
    original = transport.get_protocol()
    if (
        not all(
            hasattr(transport, name) for name in ("set_protocol", "is_reading", "resume_reading")
        )
        or not isinstance(buffered, bytearray)
        or not isinstance(original, asyncio.StreamReaderProtocol)
        or stream.at_eof()
        or stream.exception() is not None
        or transport.is_closing()
    ):
        return None
    pushed = PushedSubscription(reader, on_data, original)
    if buffered:
        reader.feed(bytes(buffered))
        buffered.clear()
    transport.set_protocol(pushed)
    if not transport.is_reading():  # the stream had paused it (a full buffer)
        transport.resume_reading()
    return pushed


def raw_subscription(pubsub: PubSub) -> RawSubscription | None:
    """A raw reader for a subscribed ``pubsub`` (its commands sent), or None."""
    parser = _hiredis_parser(pubsub.connection)
    if parser is None:
        return None
    reader = getattr(parser, "_reader", None)
    fill = getattr(parser, "read_from_socket", None)
    if reader is None or fill is None:
        return None
    return RawSubscription(reader.gets, fill)


async def raw_execute(
    redis: Redis, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]
) -> Any:
    """A recorded pipeline (``Pipeline.command_stack``) sent and read without redis-py's
    per-reply layers; ``None`` (nothing sent) where that is not possible.

    Results as ``Pipeline.execute(raise_on_error=False)`` gives them: a reply error is the
    result in its place, a command's response callback is applied (``HGETALL`` a dict). The
    batch shares one timeout, the connection's ``socket_timeout``, for sending it and reading
    its replies; any failure while the batch is on the wire (a timeout, a lost connection, a
    cancellation) disconnects the connection, so no later command reads this batch's replies.

    Only for plain connections: Sentinel's and the Redis Cluster shard's turn some replies
    (READONLY, MOVED) into a lost connection in their ``read_response``, which stays theirs.
    """
    if _AsyncHiredisParser is None or not stack:
        return None
    pool: Any = redis.connection_pool
    connection = await _get_connection(pool)
    try:
        if not _is_plain(connection):
            return None
        return await _send_and_read(redis, connection, stack)
    finally:
        await pool.release(connection)


class RawLink:
    """:func:`raw_execute` over one connection kept for one task's batches (the store's
    ordered pipeline, which sends one batch at a time).

    Taking a connection from the pool for each batch cost a lock, a timeout and a read with
    a zero timeout to check the connection is clean; this one is clean by construction: a
    batch that fails disconnects it and the next connects it again. Held until :meth:`close`
    (the pool has one connection fewer for everything else).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: Connection | None = None
        #: False once the pool gave a connection the raw path cannot use (Sentinel, a Redis
        #: Cluster shard): every batch then takes the slower public path.
        self.usable = _AsyncHiredisParser is not None

    async def execute(self, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> Any:
        """As :func:`raw_execute`: the results, or None (nothing sent)."""
        if not self.usable or not stack:
            return None
        connection = await self._connected()
        if connection is None:
            return None
        return await _send_and_read(self._redis, connection, stack)

    async def execute_packed(self, packed: list[bytes]) -> list[Any] | None:
        """Commands already packed (RESP, one ``bytes`` each), sent as one batch: their
        replies as hiredis parses them, a reply error in its place (no response callbacks:
        for commands whose reply is used as it comes, as a script's). None: nothing sent
        (the connection is not one the raw path can use)."""
        if not self.usable or not packed:
            return None
        connection = await self._connected()
        if connection is None:
            return None
        return await _exchange(connection, packed, len(packed))

    async def _connected(self) -> Connection | None:
        connection = self._connection
        if connection is None:
            pool: Any = self._redis.connection_pool
            connection = await _get_connection(pool)
            if not _is_plain(connection):
                self.usable = False
                await pool.release(connection)
                return None
            self._connection = connection
        return connection

    async def close(self) -> None:
        """Give the connection back to the pool (the store closes the pool next)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            pool: Any = self._redis.connection_pool
            await pool.release(connection)


async def _get_connection(pool: Any) -> Connection:
    try:
        connection: Connection = await pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        connection = await pool.get_connection("EVALSHA")
    return connection


def _is_plain(connection: Connection) -> bool:
    return type(connection).read_response is Connection.read_response


async def _send_and_read(
    redis: Redis, connection: Connection, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]
) -> Any:
    packed = connection.pack_commands([args for args, _ in stack])
    replies = await _exchange(connection, packed, len(stack))
    callbacks: Any = redis.response_callbacks
    found: dict[Any, Any] = {}
    results: list[Any] = []
    for reply, (args, options) in zip(replies, stack, strict=True):
        if isinstance(reply, ResponseError):
            reply = options.get(EMPTY_RESPONSE, reply)
        else:
            # Looked up once per name and batch (the table is case-insensitive: each
            # lookup upper-cases the name).
            name = args[0]
            callback = found.get(name, _UNKNOWN)
            if callback is _UNKNOWN:
                callback = found[name] = callbacks.get(name) if name in callbacks else None
            if callback is not None:
                extra = {k: v for k, v in options.items() if k not in _NOT_FOR_CALLBACKS}
                reply = callback(reply, **extra)
        results.append(reply)
    return results


async def _exchange(connection: Connection, packed: list[bytes], count: int) -> list[Any]:
    """Send packed commands and read ``count`` replies as hiredis parses them (a reply
    error in its place). One timeout, the connection's ``socket_timeout``, for the lot; any
    failure while the batch is on the wire disconnects the connection, so no later command
    reads this batch's replies."""
    try:
        async with asyncio.timeout(connection.socket_timeout):
            if not connection.is_connected:
                await connection.connect()  # type: ignore[no-untyped-call]
            writer = getattr(connection, "_writer", None)
            if isinstance(writer, asyncio.StreamWriter):
                # What send_packed_command does, without the task its wait_for starts.
                writer.writelines(packed)
                await writer.drain()
            else:
                await connection.send_packed_command(packed, check_health=False)
            parser = connection._parser
            if not isinstance(parser, _AsyncHiredisParser):
                raise RuntimeError("the connection's parser changed under it")
            gets = parser._reader.gets  # type: ignore[attr-defined]
            fill: Any = parser.read_from_socket
            replies: list[Any] = []
            for _ in range(count):
                reply = gets()
                while reply is NOT_ENOUGH_DATA:
                    await fill()
                    reply = gets()
                if isinstance(reply, ConnectionError):
                    raise reply
                replies.append(reply)
        return replies
    except BaseException:
        await connection.disconnect()
        raise


_UNKNOWN = object()

#: Pipeline options redis-py consumes before a response callback sees the rest
#: (``redis.client.EMPTY_RESPONSE``, ``NEVER_DECODE``).
EMPTY_RESPONSE = "EMPTY_RESPONSE"
_NOT_FOR_CALLBACKS = frozenset({EMPTY_RESPONSE, "NEVER_DECODE", "keys"})
