"""Load-generator core: cheap counting clients, the broadcast workload and its statistics.

Clients are plain :class:`asyncio.Protocol` objects (no streams), many sharing one event loop.
After its handshake a client only *counts* what it receives: imchat messages by counting
their text marks (``~S<seq>~T<monotonic ns>~``, one per message the sender wrote), IRC lines
by counting newlines: one C call per received chunk either way, never a Python step per frame
or line, so the generator's cost per delivery is no higher for one protocol than the other
(walking each frame's length header in Python made it so, and at R=100 the generator, not
the server, set the rate). Probe clients also read each mark's timestamp and ``verify``
clients its sequence number, with one regular-expression scan per chunk (``BaseClient._scanned``)
for both protocols. Only the part of a chunk up to its last complete frame (``}``) or line
is scanned; the rest waits for the next chunk, so a mark split across reads is counted once.
Protocol specifics live in :class:`ImchatClient` here and in ``ircbench.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import math
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import msgspec
from serverproc import HOST, ServerProc, machine_busy_seconds

from imchat.protocol import encode_message

_HEADER = struct.Struct(">I").unpack_from
_json_decode = msgspec.json.Decoder().decode
_REPLY_ID = re.compile(rb'"id":(\d+)')
#: A text's mark (:func:`make_text`): sequence number and send time.
_MARK = re.compile(rb"~S(\d+)~T(\d+)~")
#: What every counted imchat message carries exactly once: its text's opening quote and the
#: start of its mark (``bytes.count`` of this needle is ~1.5x faster than of ``~S`` alone).
MARK_START = b'":"~S'


class Mode(enum.Enum):
    DECODE = 1  # handshake: parse everything, match replies
    DISCARD = 2  # idle or settling: count bytes only
    COUNT = 3  # measuring: count messages (probes also read timestamps)


@dataclass
class Stats:
    """Counters shared by every client of one run."""

    counting: bool = False
    delivered: int = 0
    target: int = 1 << 62
    done_at: float = 0.0
    wake_at: int = 1 << 62
    raw_bytes: int = 0
    lost: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    acks: int = 0
    #: Send time of each ``say`` by its request id (imchat), and ``ok`` latencies.
    sent_ns: dict[int, int] = field(default_factory=dict)
    ack_latencies_ns: list[int] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def make_text(seq: int, sent_ns: int, size: int) -> str:
    """A message text of ``size`` characters carrying its sequence number and send time."""
    head = f"~S{seq}~T{sent_ns}~ "
    return head + "x" * max(0, size - len(head))


class BaseClient(asyncio.Protocol):
    """State common to imchat and IRC clients; subclasses implement ``data_received``."""

    def __init__(
        self, stats: Stats, *, probe: bool = False, verify: bool = False, sender: bool = False
    ) -> None:
        self.stats = stats
        self.probe = probe or verify
        self.seen: list[int] | None = [] if verify else None
        self.sender = sender
        self.mode = Mode.DECODE
        self.count = 0
        self.closed = False
        self.leaving = False
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._waiter: asyncio.Future[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.leaving:
            self.stats.lost += 1
        self._resolve(exc=ConnectionError(f"connection lost: {exc}"))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def start_counting(self) -> None:
        """Switch to counting; only valid when no bytes are in flight (after settling)."""
        self._rest = b""
        self.count = 0
        self.mode = Mode.COUNT

    def received_exactly(self, messages: int) -> bool:
        """Verify mode: saw sequence numbers 0..messages-1, each once, and nothing else."""
        return self.count == messages and sorted(self.seen or ()) == list(range(messages))

    def discard(self) -> None:
        self.mode = Mode.DISCARD

    def abort(self) -> None:
        self.leaving = True
        if self.transport is not None:
            self.transport.abort()

    async def _await_reply(self, timeout: float) -> Any:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None

    def _resolve(self, result: Any = None, exc: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(result)

    def _counted(self, n: int) -> None:
        self.count += n
        stats = self.stats
        stats.delivered += n
        if stats.delivered >= stats.wake_at:
            stats.wake.set()
            if stats.delivered >= stats.target and not stats.done.is_set():
                stats.done_at = time.monotonic()
                stats.done.set()

    def _scanned(self, data: bytes, end: int, now_ns: int) -> int:
        """Record the marks in ``data[:end]`` (whole frames or lines); returns how many."""
        marks = _MARK.findall(data, 0, end)
        if marks:
            self.stats.latencies_ns.extend([now_ns - int(sent) for _, sent in marks])
            if self.seen is not None:
                self.seen.extend([int(seq) for seq, _ in marks])
        return len(marks)

    # Protocol-specific API
    async def handshake(
        self, nick: str, rooms: Sequence[str], timeout: float, token: str | None = None
    ) -> None:
        raise NotImplementedError

    def say(self, room: str, text: str, rid: int | None = None, sent_ns: int = 0) -> None:
        """Send ``text``; ``rid``: a request id whose reply's latency (from ``sent_ns``)
        is recorded, where the protocol has replies."""
        raise NotImplementedError


class ImchatClient(BaseClient):
    """An imchat session: frames are walked by their length headers during the handshake;
    while counting, messages are counted by their marks (see the module's docstring)."""

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.raw_bytes += len(data)
        mode = self.mode
        if mode is Mode.DISCARD:
            return
        if self._rest:
            data = self._rest + data
        if mode is Mode.COUNT:
            # A frame's JSON ends with ``}``; texts carry none, so every mark before the
            # chunk's last ``}`` is whole, and none after it is.
            end = data.rfind(b"}") + 1
            self._rest = data[end:]
            if self.probe:
                frames = self._scanned(data, end, time.monotonic_ns())
            else:
                frames = data.count(MARK_START, 0, end)
            if stats.counting:
                self._counted(frames)
            return
        n = len(data)
        pos = 0
        while pos + 4 <= n:
            end = pos + 4 + _HEADER(data, pos)[0]
            if end > n:
                break
            self._decoded(data[pos + 4 : end])
            pos = end
        self._rest = data[pos:] if pos < n else b""

    def _decoded(self, payload: bytes) -> None:
        if self.sender and self._waiter is None:
            # After its handshake the sender sees an ``ok`` per say and its own messages.
            if b'"type":"ok"' in payload:
                stats = self.stats
                stats.acks += 1
                found = _REPLY_ID.search(payload)
                sent = stats.sent_ns.pop(int(found.group(1)), None) if found else None
                if sent is not None:
                    stats.ack_latencies_ns.append(time.monotonic_ns() - sent)
            elif b'"error"' in payload:
                self.stats.errors[str(_json_decode(payload).get("code"))] += 1
            return
        if b'"id"' not in payload:
            return  # an event; only replies matter during the handshake
        obj = _json_decode(payload)
        if obj.get("type") == "error":
            self._resolve(exc=RuntimeError(f"{obj.get('code')}: {obj.get('message')}"))
        else:
            self._resolve(obj)

    async def handshake(
        self, nick: str, rooms: Sequence[str], timeout: float, token: str | None = None
    ) -> None:
        hello: dict[str, Any] = {"type": "hello", "proto": 1, "nick": nick, "id": 1}
        if token is not None:
            hello["token"] = token
        self.write(encode_message(hello))
        await self._await_reply(timeout)
        for room in rooms:
            self.write(encode_message({"type": "join", "room": room, "id": 2}))
            await self._await_reply(timeout)

    def say(self, room: str, text: str, rid: int | None = None, sent_ns: int = 0) -> None:
        request: dict[str, Any] = {"type": "say", "room": room, "text": text}
        if rid is not None:
            request["id"] = rid
            self.stats.sent_ns[rid] = sent_ns
        self.write(encode_message(request))


#: Linux's ``IP_BIND_ADDRESS_NO_PORT`` (``socket`` names it from Python 3.12 only).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect_from(source: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``source`` and connected to ``port`` on HOST.

    The local port is left to ``connect`` (``IP_BIND_ADDRESS_NO_PORT``): a plain
    ``bind((source, 0))`` makes the kernel find a port no other socket on that address holds,
    a search that grows with every socket held, and the 16,667th of a crowd process's sockets
    took ~3 ms of it (a plain crowd of 16,667 connected in 28.5 s, 9.8 s with the option).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Driver:
    """A server under test plus the client class that speaks its protocol."""

    client_cls: ClassVar[type[BaseClient]] = ImchatClient
    #: Most connections the server can hold (None: no known limit).
    max_connections: int | None = None
    #: Handshakes in flight at once (bounded by the server's listen backlog).
    parallel: ClassVar[int] = 64
    #: Local address the clients' sockets are bound to before connecting (None: the
    #: kernel's choice). One source address reaches one server port through at most
    #: ``ip_local_port_range`` ports (~28,000): more connections need more addresses
    #: (all of 127/8 is loopback).
    source: str | None = None

    def __init__(self, name: str, server: ServerProc) -> None:
        self.name = name
        self.server = server

    def nick(self, role: str, i: int) -> str:
        return f"{role}{i}"

    def room(self, name: str) -> str:
        return name

    async def connect(
        self,
        stats: Stats,
        nick: str,
        rooms: Sequence[str],
        *,
        probe: bool = False,
        verify: bool = False,
        sender: bool = False,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> BaseClient:
        loop = asyncio.get_running_loop()
        port = self.server.port
        assert port is not None

        def make() -> BaseClient:
            return self.client_cls(stats, probe=probe, verify=verify, sender=sender)

        async def open_() -> BaseClient:
            if self.source is None:
                return (await loop.create_connection(make, HOST, port))[1]
            sock = await connect_from(self.source, port)
            return (await loop.create_connection(make, sock=sock))[1]

        client = await asyncio.wait_for(open_(), timeout)
        try:
            await client.handshake(nick, [self.room(r) for r in rooms], timeout, token)
        except BaseException:
            client.abort()
            raise
        return client


class ImchatDriver(Driver):
    client_cls = ImchatClient

    def admin_token(self) -> str:
        """The token the server wrote for its ``admin`` account on first start."""
        assert self.server.data_dir is not None
        return (self.server.data_dir / "admin.token").read_text().strip()


async def connect_many(
    driver: Driver,
    stats: Stats,
    specs: Iterable[tuple[str, list[str], bool]],
    *,
    verify: bool = False,
    token: str | None = None,
    parallel: int = 0,
) -> list[BaseClient]:
    """Connect ``(nick, rooms, probe)`` clients, ``parallel`` (default ``driver.parallel``)
    at a time, in order."""
    sem = asyncio.Semaphore(parallel or driver.parallel)

    async def one(nick: str, rooms: list[str], probe: bool) -> BaseClient:
        async with sem:
            client = await driver.connect(
                stats, nick, rooms, probe=probe, verify=verify, token=token
            )
            client.discard()
            return client

    tasks = [asyncio.create_task(one(*spec)) for spec in specs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().abort()
        raise


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The generator's own heap collected and frozen while it measures.

    The generator stamps and reads every message, so a pause of its own is a latency figure
    of the server's. Holding a crowd of idle users (the sweep's 10,000) made its young
    collections take 10-32 ms and its full ones 60-100 ms (``gc.callbacks``, round 15), in
    the runs with idle users only: their p99 measured the generator's heap. Frozen, a
    collection visits only what the measurement itself made.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def settle(stats: Stats, quiet: float = 0.5, limit: float = 300.0) -> float:
    """Wait until no client has received a byte for ``quiet`` seconds; returns the wait."""
    start = time.monotonic()
    last = -1
    while time.monotonic() - start < limit:
        if stats.raw_bytes == last:
            return time.monotonic() - start
        last = stats.raw_bytes
        await asyncio.sleep(quiet)
    raise TimeoutError(f"server still sending after {limit}s")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (nan if empty): the least value with at
    least ``pct`` % of them at or below it."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), math.ceil(pct * len(values) / 100)))
    return float(values[rank - 1])


@dataclass
class BroadcastResult:
    """One broadcast run, as printed in the tables and written to JSON."""

    server: str
    receivers: int
    messages: int
    rate: float  # deliveries/s the sender was paced at, 0 = flat out
    idle_other: int
    expected: int
    delivered: int
    seconds: float
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: ``ok`` latency (imchat: say to its reply, after the commit); nan where none.
    ok_p50_ms: float
    ok_p99_ms: float
    samples: int
    server_cpu_s: float
    server_rss_kb: int
    server_hwm_kb: int
    loadgen_cpu_s: float
    #: Busy CPU seconds on the machine not used by the server or this process (noise).
    other_cpu_s: float
    lost: int
    errors: dict[str, int]
    acks: int
    verified: int | None  # receivers that saw exactly seq 0..M-1 once each (verify mode)
    complete: bool

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.server_cpu_s / self.delivered * 1e6 if self.delivered else float("nan")


async def broadcast(
    driver: Driver,
    *,
    receivers: int,
    messages: int,
    rate: float = 0.0,
    window: int = 0,
    probes: int = 100,
    verify: bool = False,
    idle_other: int = 0,
    idle_room_size: int = 100,
    text_size: int = 100,
    stall: float = 15.0,
    around: tuple[Callable[[], None], Callable[[], None]] | None = None,
    settle_after: float = 0.0,
) -> BroadcastResult:
    """One sender, ``receivers`` in one room, ``messages`` says; optional idle users elsewhere.

    Flat out (``rate`` 0) the sender keeps at most ``window`` messages (0: enough for about
    50,000 deliveries, 8 to 64 messages) undelivered to the
    slowest part of the room (a shared delivery counter), so the server is always busy but
    no queue grows without bound. Paced, it sends ``rate / receivers`` messages per second on
    a fixed schedule and stamps each with its *scheduled* time (no coordinated omission).
    ``around`` is called just before and just after the measured part (e.g. a profiler).
    ``settle_after``: seconds to wait once everyone has joined before measuring (the
    server's one-off work after a crowd arrives then falls before the measured part).
    """
    stats = Stats()
    clients: list[BaseClient] = []
    try:
        if idle_other:
            clients += await connect_many(
                driver,
                stats,
                (
                    (driver.nick("i", i), [f"idle{i // idle_room_size}"], False)
                    for i in range(idle_other)
                ),
            )
        every = max(1, receivers // max(1, probes))
        room_clients = await connect_many(
            driver,
            stats,
            ((driver.nick("r", i), ["bench"], i % every == 0) for i in range(receivers)),
            verify=verify,
        )
        clients += room_clients
        sender = await driver.connect(stats, driver.nick("s", 0), ["bench"], sender=True)
        clients.append(sender)
        await settle(stats)
        if settle_after > 0:
            await asyncio.sleep(settle_after)
            await settle(stats)
        for client in room_clients:
            client.start_counting()
        room = driver.room("bench")
        stats.counting = True
        stats.target = receivers * messages
        # Auto: ~50,000 deliveries in flight, but at most 64 messages: InspIRCd leaves a
        # larger burst from one client half-read until its next once-a-second timer.
        window = window or max(8, min(64, 50_000 // receivers))
        with frozen_heap():
            if around:
                around[0]()
            cpu0, lg0 = driver.server.cpu_seconds(), time.process_time()
            busy0 = machine_busy_seconds()
            t0 = time.monotonic()
            await _send(stats, sender, room, receivers, messages, rate, window, text_size, stall)
            await _wait_done(stats, stall)
            t1 = stats.done_at if stats.done.is_set() else time.monotonic()
            cpu1, lg1 = driver.server.cpu_seconds(), time.process_time()
            busy1 = machine_busy_seconds()
            if around:
                around[1]()
        lat = sorted(stats.latencies_ns)
        acks = sorted(stats.ack_latencies_ns)
        verified = None
        if verify:
            verified = sum(1 for c in room_clients if c.received_exactly(messages))
        seconds = max(t1 - t0, 1e-9)
        return BroadcastResult(
            server=driver.name,
            receivers=receivers,
            messages=messages,
            rate=rate,
            idle_other=idle_other,
            expected=stats.target,
            delivered=stats.delivered,
            seconds=seconds,
            deliveries_per_s=stats.delivered / seconds,
            p50_ms=percentile(lat, 50) / 1e6,
            p99_ms=percentile(lat, 99) / 1e6,
            max_ms=(lat[-1] / 1e6 if lat else float("nan")),
            ok_p50_ms=percentile(acks, 50) / 1e6,
            ok_p99_ms=percentile(acks, 99) / 1e6,
            samples=len(lat),
            server_cpu_s=cpu1 - cpu0,
            server_rss_kb=driver.server.rss_kb(),
            server_hwm_kb=driver.server.hwm_kb(),
            loadgen_cpu_s=lg1 - lg0,
            other_cpu_s=(busy1 - busy0) - (cpu1 - cpu0) - (lg1 - lg0),
            lost=stats.lost,
            errors=dict(stats.errors),
            acks=stats.acks,
            verified=verified,
            complete=stats.delivered == stats.target and stats.lost == 0,
        )
    finally:
        for client in clients:
            client.abort()


async def _send(
    stats: Stats,
    sender: BaseClient,
    room: str,
    receivers: int,
    messages: int,
    rate: float,
    window: int,
    text_size: int,
    stall: float,
) -> None:
    per_s = rate / receivers if rate else 0.0
    start = time.monotonic_ns()
    for seq in range(messages):
        if per_s:
            due = start + int(seq * 1e9 / per_s)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = due
        else:
            need = (seq - window) * receivers
            while stats.delivered < need:
                stats.wake_at = need
                stats.wake.clear()
                try:
                    await asyncio.wait_for(stats.wake.wait(), stall)
                except TimeoutError:
                    return  # the server stopped delivering; reported as incomplete
            stamp = time.monotonic_ns()
        if sender.closed:
            return
        sender.say(room, make_text(seq, stamp, text_size), seq + 1, stamp)
    stats.wake_at = stats.target


async def _wait_done(stats: Stats, stall: float) -> None:
    """Until every delivery arrived, or none arrived for ``stall`` seconds."""
    last = -1
    while not stats.done.is_set() and stats.delivered != last:
        last = stats.delivered
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.done.wait(), stall)


def source_addresses(clients: Iterable[BaseClient]) -> set[str]:
    """The local addresses the clients' sockets are bound to."""
    found = set()
    for client in clients:
        name = client.transport.get_extra_info("sockname") if client.transport else None
        if isinstance(name, tuple):
            found.add(str(name[0]))
    return found


async def idle_memory(
    driver: Driver,
    *,
    connections: int,
    room_size: int = 100,
    baseline: int = 10,
    sessions: bool = False,
    parallel: int = 0,
    around: tuple[Callable[[], None], Callable[[], None]] | None = None,
    idle_seconds: float = 5.0,
) -> dict[str, Any]:
    """Server RSS growth per idle connection, each joined to a room of ``room_size`` members,
    and the server's CPU while they sit idle (``idle_seconds`` after the reading: timers and
    sweeps a server runs over its connections; InspIRCd pings them every few minutes).

    ``baseline`` connections are made first so code paths and caches are warm before the
    first reading. With ``sessions`` (imchat only) every connection is a session of the
    ``admin`` account instead of a user of its own, which skips the ``online`` event each new
    user costs every connected session (N users joining one by one cost N^2/2 events).
    ``parallel``: handshakes in flight at once (0: the driver's usual; ``connections``: all
    at once, a reconnect storm). ``around`` is called just before and just after the
    connecting part (e.g. a profiler); server, generator and other CPU seconds cover it too.
    """
    stats = Stats()
    clients: list[BaseClient] = []
    try:
        clients += await connect_many(
            driver, stats, ((driver.nick("w", i), ["warm"], False) for i in range(baseline))
        )
        await settle(stats)
        rss0 = driver.server.rss_kb()
        token = driver.admin_token() if sessions and isinstance(driver, ImchatDriver) else None
        if around:
            around[0]()
        cpu0, lg0, busy0 = driver.server.cpu_seconds(), time.process_time(), machine_busy_seconds()
        t0 = time.monotonic()
        clients += await connect_many(
            driver,
            stats,
            (
                ("admin" if token else driver.nick("i", i), [f"idle{i // room_size}"], False)
                for i in range(connections)
            ),
            token=token,
            parallel=parallel,
        )
        connect_s = time.monotonic() - t0
        cpu1, lg1, busy1 = driver.server.cpu_seconds(), time.process_time(), machine_busy_seconds()
        if around:
            around[1]()
        await settle(stats, quiet=1.0)
        settle_s = time.monotonic() - t0 - connect_s
        await asyncio.sleep(1.0)
        rss1 = driver.server.rss_kb()
        idle0, i0 = driver.server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(idle_seconds)
        idle_cpu = (driver.server.cpu_seconds() - idle0) / (time.monotonic() - i0)
        return {
            # Where the clients really came from (``Driver.source``, else the kernel's pick).
            "sources": sorted(source_addresses(clients)),
            "server": driver.name,
            "connections": connections,
            "room_size": room_size,
            "as": "sessions of one user" if token else "users",
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "kb_per_connection": (rss1 - rss0) / connections,
            "hwm_kb": driver.server.hwm_kb(),
            "connect_s": connect_s,
            "parallel": parallel or driver.parallel,
            "settle_s": settle_s,
            # Over the connecting part only (t0 to the last join's reply).
            "server_cpu_s": cpu1 - cpu0,
            "loadgen_cpu_s": lg1 - lg0,
            "other_cpu_s": (busy1 - busy0) - (cpu1 - cpu0) - (lg1 - lg0),
            "idle_cpu_ms_per_s": idle_cpu * 1000,
            "lost": stats.lost,
            "complete": stats.lost == 0,
        }
    finally:
        for client in clients:
            client.abort()
