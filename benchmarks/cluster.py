"""Redis-backed nodes against one node with the embedded store: rate and node CPU per delivery.

Every run has the same clients: receivers and senders, all in one room. Spread over 1, 2
or 3 nodes, every message crosses Redis pub/sub to reach the other nodes' share. "3 nodes,
recipients on one" keeps every client on the first node while two more nodes sit in the
cluster: what the idle nodes cost is what a node pays for events none of its users need.

    python benchmarks/cluster.py [--receivers 40] [--senders 4] [--messages 20000] [--repeat 3]

A delivery is one ``msg`` event read by one receiver; the clock runs from the first ``say`` to
the last expected delivery. Node CPU is the time every node process's threads ran during the
load (``/proc/<pid>/task/*/schedstat``, exact, where ``stat``'s 10 ms ticks would leave a
run's figure ±10 % over three nodes), divided by deliveries. ``--repeat`` rounds each run
every setup once, in turn; the table shows each setup's cheapest run, and the median of its
rounds' ratios to the embedded run of the same round (two runs back to back meet the same
machine, where two separately cheapest runs may come from minutes apart).

Redis commands and Redis CPU per say come from ``INFO stats`` (``total_commands_processed``)
and ``INFO cpu`` (``used_cpu_user`` + ``used_cpu_sys``) around the load. By default the
benchmark starts a Redis of its own on a free port (``redis-server`` must be on PATH), so no
other client inflates them; ``--redis URL`` uses an existing one instead (its own key prefix,
deleted afterwards). Everything listens on 127.0.0.1; each run is bounded by ``--timeout``.

Round trips on the wire: Redis counts the reads it does on client sockets
(``total_reads_processed``) and the writes (``total_writes_processed``: replies and
envelopes pushed to subscribers). A node sends a request batch (a pipeline of any number of
commands) with one write and waits for its replies before the next batch on that
connection, so each read is one request/response exchange (a batch over 16 KB, Redis's read
buffer, takes more than one read: the figure is an upper bound). Reads per say under load
show how well says share round trips; after each loaded run, ``--lone`` says (default 200)
go one at a time, each waiting for its ``ok`` and for every receiver's copy, which gives the
round trips a say costs on its own. Heartbeats and the benchmark's own ``INFO`` are
included (a few per run). With ``--redis``, other clients of that Redis count too.

``--senders-on-one`` adds a setup with the receivers spread over 3 nodes and every sender on
the first: the other two only receive, and their CPU per say (the last column) is what a
node of a room spread over nodes pays for the envelopes published elsewhere.

``--pythonpath DIR`` runs every node from another checkout (``git archive REV imchat | tar
-x -C DIR``), for a before/after pair of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from serverproc import LOOPBACK_CROWD, delete_prefix, process_cpu_seconds

HEADER = struct.Struct(">I")
#: The reference setup: one node with the embedded store.
EMBEDDED = "embedded, 1 node"
#: The setup added by ``--senders-on-one``: receivers on 3 nodes, every sender on the first.
SENDERS_ON_ONE = "redis, 3 nodes, senders on one"


def frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


class BenchClient(asyncio.Protocol):
    """A minimal imchat client: hello, join, then count ``msg`` events and ``ok`` replies."""

    def __init__(self, nick: str, room: str, expected: int) -> None:
        self.nick = nick
        self.room = room
        self.expected = expected
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.received = 0
        self.acked = 0
        self.window = asyncio.Event()
        self.last_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send({"type": "hello", "proto": 1, "nick": self.nick, "id": "hello"})
        self.send({"type": "join", "room": self.room, "id": "join"})

    def send(self, message: dict[str, object]) -> None:
        assert self.transport is not None
        self.transport.write(frame(message))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            body = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            self.handle(body)
        del buffer[:offset]

    def handle(self, body: bytes) -> None:
        if body.startswith(b'{"type":"msg"'):
            self.received += 1
            if self.received == self.expected and not self.done.done():
                self.last_at = time.perf_counter()
                self.done.set_result(None)
            return
        message = json.loads(body)
        kind = message.get("type")
        if kind == "ok" and message.get("id") == "join":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "ok":
            self.acked += 1
            self.window.set()
        elif kind == "error":
            error = RuntimeError(f"{self.nick}: {message.get('code')}: {message.get('message')}")
            for future in (self.ready, self.done):
                if not future.done():
                    future.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"{self.nick}: connection lost")
        for future in (self.ready, self.done):
            if not future.done():
                future.set_exception(error)


async def open_client(port: int, nick: str, room: str, expected: int) -> BenchClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: BenchClient(nick, room, expected), "127.0.0.1", port
    )
    await client.ready
    return client


async def send_all(client: BenchClient, count: int, in_flight: int) -> None:
    """Say ``count`` messages keeping at most ``in_flight`` unacknowledged."""
    sent = 0
    while sent < count:
        while sent - client.acked >= in_flight:
            client.window.clear()
            await client.window.wait()
        client.send({"type": "say", "room": client.room, "text": f"m{sent}", "id": sent})
        sent += 1


@dataclass
class Result:
    name: str
    deliveries: int
    seconds: float
    #: User + system seconds of every node process during the load.
    node_cpu: float = 0.0
    #: Redis commands processed during the load, per message said (0 without Redis).
    redis_commands_per_say: float = 0.0
    #: Redis CPU (user + system) during the load, per message said, in µs.
    redis_cpu_us_per_say: float = 0.0
    #: CPU of the nodes without clients (no recipients), per message said, in µs.
    idle_cpu_us_per_say: float = 0.0
    #: Reads Redis did on client sockets during the load, per message said: exchanges.
    redis_reads_per_say: float = 0.0
    #: Writes Redis did (replies and pushed envelopes) during the load, per message said.
    redis_writes_per_say: float = 0.0
    #: The same two, and commands, for says sent one at a time after the load.
    lone: Counters | None = None
    #: System-call reads and writes of every node process during the load, per message said
    #: (``/proc/<pid>/io``: client sockets, Redis connections, the subscription).
    node_syscalls_per_say: float = 0.0
    #: Of ``node_cpu``, the kernel's (system time).
    node_sys_cpu: float = 0.0
    #: Times the node processes slept and were woken during the load, per message said.
    node_wakeups_per_say: float = 0.0
    #: With the senders on the first node: the CPU of each other node (receivers only),
    #: averaged, per message said, in µs: what reading and delivering envelopes published
    #: elsewhere costs a node.
    receiving_cpu_us_per_say: float = 0.0

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.node_cpu / self.deliveries * 1e6


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, apart (in clock ticks: only the
    system share is taken from these)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def syscalls(pid: int) -> int:
    """Read and write system calls of a process so far (``/proc/<pid>/io``: ``syscr`` and
    ``syscw``; ``recv``/``send``/``writev`` on sockets count too), 0 where unreadable."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return 0
    return int(fields["syscr"]) + int(fields["syscw"])


def wakeups(pid: int) -> int:
    """Times a process went to sleep and was woken (``voluntary_ctxt_switches``): for an
    event loop, the turns that found nothing to do and waited."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


@dataclass
class Counters:
    """What Redis counted so far (or, subtracted, during a phase)."""

    commands: float = 0
    cpu: float = 0.0
    reads: float = 0
    writes: float = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.commands - other.commands,
            self.cpu - other.cpu,
            self.reads - other.reads,
            self.writes - other.writes,
        )

    def per(self, says: int) -> Counters:
        return Counters(
            self.commands / says, self.cpu / says, self.reads / says, self.writes / says
        )


#: What one :func:`redis_counters` call adds to Redis's counts (a connection, two ``INFO``):
#: measured by :func:`calibrate`, taken out of every phase.
PROBE = Counters()


def calibrate(url: str) -> None:
    global PROBE
    first = redis_counters(url)
    PROBE = redis_counters(url) - first
    PROBE.cpu = 0.0


def since(before: Counters, url: str | None) -> Counters:
    """Redis's counts since ``before``, without those of reading them."""
    if url is None:
        return Counters()
    return redis_counters(url) - before - PROBE


def redis_counters(url: str | None) -> Counters:
    """Commands, CPU seconds, socket reads and writes of the Redis so far."""
    if url is None:
        return Counters()
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats, cpu = client.info("stats"), client.info("cpu")
        return Counters(
            int(stats["total_commands_processed"]),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            int(stats["total_reads_processed"]),
            int(stats["total_writes_processed"]),
        )
    finally:
        client.close()


async def run_load(
    name: str,
    ports: list[int],
    *,
    receivers: int,
    senders: int,
    messages: int,
    timeout: float,
    pids: list[int],
    redis_url: str | None,
    lone: int = 0,
    senders_on_one: bool = False,
) -> Result:
    total = senders * messages
    expected = total  # every message reaches every receiver
    room = "bench"
    tag = uuid.uuid4().hex[:6]
    recv_clients = [
        await open_client(ports[i % len(ports)], f"r{tag}{i}", room, expected)
        for i in range(receivers)
    ]
    # Senders are members too (they must be, to say); they count their own copies.
    send_clients = [
        await open_client(
            ports[0 if senders_on_one else i % len(ports)], f"s{tag}{i}", room, expected
        )
        for i in range(senders)
    ]
    idle = pids[len(ports) :]  # nodes with no client: what a message costs them
    receiving = pids[1 : len(ports)] if senders_on_one else []  # receivers, no sender
    cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
    sys_before = sum(cpu_split(pid)[1] for pid in pids)
    calls_before = sum(syscalls(pid) for pid in pids)
    wakeups_before = sum(wakeups(pid) for pid in pids)
    idle_before = sum(process_cpu_seconds(pid) for pid in idle)
    receiving_before = sum(process_cpu_seconds(pid) for pid in receiving)
    redis_before = redis_counters(redis_url)
    start = time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(send_all(c, messages, 32) for c in send_clients),
                *(c.done for c in recv_clients),
            ),
            timeout,
        )
    finally:
        for client in recv_clients + send_clients:
            if client.transport is not None:
                client.transport.close()
    end = max(c.last_at for c in recv_clients)
    node_cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before
    node_sys = sum(cpu_split(pid)[1] for pid in pids) - sys_before
    calls = sum(syscalls(pid) for pid in pids) - calls_before
    woken = sum(wakeups(pid) for pid in pids) - wakeups_before
    idle_cpu = sum(process_cpu_seconds(pid) for pid in idle) - idle_before
    receiving_cpu = sum(process_cpu_seconds(pid) for pid in receiving) - receiving_before
    during = since(redis_before, redis_url).per(total)
    result = Result(
        name,
        expected * receivers,
        end - start,
        node_cpu,
        during.commands,
        during.cpu * 1e6,
        idle_cpu / total * 1e6,
        during.reads,
        during.writes,
        node_syscalls_per_say=calls / total,
        node_sys_cpu=node_sys,
        node_wakeups_per_say=woken / total,
        receiving_cpu_us_per_say=receiving_cpu / len(receiving) / total * 1e6 if receiving else 0,
    )
    if redis_url is not None and lone:
        result.lone = await lone_says(ports, redis_url, lone, timeout)
    return result


async def lone_says(ports: list[int], redis_url: str, count: int, timeout: float) -> Counters:
    """Redis's counters per say for ``count`` says sent one at a time: a sender on the first
    node, a receiver on each node given clients; each say waits for its ``ok`` and for every
    copy before the next, so nothing shares a round trip."""
    room = "lone"
    tag = uuid.uuid4().hex[:6]
    receivers = [await open_client(port, f"l{tag}{i}", room, count) for i, port in enumerate(ports)]
    sender = await open_client(ports[0], f"ls{tag}", room, count)
    try:
        await asyncio.sleep(1.0)  # the loaded run's clients are gone (their disconnects done)
        before = redis_counters(redis_url)
        for i in range(count):
            sender.send({"type": "say", "room": room, "text": f"m{i}", "id": i})
            async with asyncio.timeout(timeout):
                while sender.acked <= i or any(c.received <= i for c in [*receivers, sender]):
                    await asyncio.sleep(0.0005)
        return since(before, redis_url).per(count)
    finally:
        for client in [*receivers, sender]:
            if client.transport is not None:
                client.transport.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """A server subprocess on a free port; its log goes to a file next to its data.

    ``pythonpath``: run the server from that directory's ``imchat`` (another checkout)."""

    def __init__(self, args: list[str], data_dir: Path, pythonpath: str = "") -> None:
        data_dir.mkdir(parents=True)
        self.port = free_port()
        self.log = data_dir / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imchat",
                    "server",
                    "--port",
                    str(self.port),
                    "--rate",
                    "0",
                    *LOOPBACK_CROWD,
                    "--max-connections-per-ip",
                    "0",
                    "--log-level",
                    "warning",
                    "--data-dir",
                    str(data_dir),
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                # Out of the source tree, so ``-m imchat`` imports the checkout asked for.
                cwd=data_dir,
                env={**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None,
            )

    async def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.log.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not start listening") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def with_nodes(
    name: str,
    node_args: list[list[str]],
    base: Path,
    load: dict[str, int | float],
    *,
    client_nodes: int,
    redis_url: str | None,
    pythonpath: str = "",
    lone: int = 0,
    senders_on_one: bool = False,
) -> Result:
    nodes = [Node(args, base / f"{name}-{i}", pythonpath) for i, args in enumerate(node_args)]
    try:
        for node in nodes:
            await node.wait_listening()
        return await run_load(
            name,
            [n.port for n in nodes[:client_nodes]],
            pids=[n.proc.pid for n in nodes],
            redis_url=redis_url,
            lone=lone,
            senders_on_one=senders_on_one,
            **load,  # type: ignore[arg-type]
        )
    finally:
        for node in nodes:
            node.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=40)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20_000, help="per sender")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each runs every setup once, in turn"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--redis", default="", help="an existing Redis (default: start one)")
    parser.add_argument("--only", default="", help="run only setups whose name contains this")
    parser.add_argument("--lone", type=int, default=200, help="says one at a time after a load")
    parser.add_argument("--pythonpath", default="", help="run the nodes from this checkout")
    parser.add_argument(
        "--senders-on-one",
        action="store_true",
        help=f"add the setup {SENDERS_ON_ONE!r}: the receive-only nodes' CPU per say",
    )
    args = parser.parse_args()
    private = None
    if not args.redis:
        private = PrivateRedis()
        args.redis = private.url
    calibrate(args.redis)
    try:
        await run_setups(args)
    finally:
        if private is not None:
            private.stop()


class PrivateRedis:
    """A Redis of the benchmark's own (no persistence), so its counters are the load's alone."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="imchat-bench-redis-")
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.name,
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


async def run_setups(args: argparse.Namespace) -> dict[str, list[Result]]:
    """Every setup ``--repeat`` times, interleaved; prints the table and returns each setup's
    runs by name, in round order (the first setup, ``embedded, 1 node``, is the reference)."""
    load = {
        "receivers": args.receivers,
        "senders": args.senders,
        "messages": args.messages,
        "timeout": args.timeout,
    }
    prefix = f"imchat-bench-{uuid.uuid4().hex[:8]}:"
    redis_args = ["--redis", args.redis, "--redis-prefix", prefix]
    #: name, each node's arguments, how many of the nodes get clients
    setups: list[tuple[str, list[list[str]], int]] = [
        (EMBEDDED, [[]], 1),
        ("redis, 1 node", [redis_args], 1),
        ("redis, 2 nodes", [redis_args] * 2, 2),
        ("redis, 3 nodes", [redis_args] * 3, 3),
        ("redis, 3 nodes, recipients on one", [redis_args] * 3, 1),
    ]
    if getattr(args, "senders_on_one", False):
        setups.append((SENDERS_ON_ONE, [redis_args] * 3, 3))
    # The embedded run stays: every figure is a ratio to it.
    setups = [s for s in setups if s is setups[0] or args.only in s[0]]
    runs: dict[str, list[Result]] = {name: [] for name, _, _ in setups}
    with tempfile.TemporaryDirectory(prefix="imchat-bench-") as tmp:
        base = Path(tmp)
        try:
            # Interleaved, so a noisy neighbour on a shared machine hurts every setup alike.
            for round_ in range(args.repeat):
                for name, node_args, client_nodes in setups:
                    run_dir = base / f"run{round_}"
                    redis_url = args.redis if node_args[0] else None
                    result = await with_nodes(
                        name,
                        node_args,
                        run_dir,
                        load,
                        client_nodes=client_nodes,
                        redis_url=redis_url,
                        pythonpath=args.pythonpath,
                        lone=args.lone,
                        senders_on_one=name == SENDERS_ON_ONE,
                    )
                    delete_prefix(args.redis, prefix)
                    runs[name].append(result)
        finally:
            delete_prefix(args.redis, prefix)
    print_table(args, runs)
    return runs


def cheapest(runs: list[Result]) -> Result:
    """The run with the least node CPU: CPU time is what a noisy neighbour inflates least."""
    return min(runs, key=lambda r: r.cpu_us_per_delivery)


def paired_ratios(runs: list[Result], embedded: list[Result]) -> list[float]:
    """Each run's node CPU per delivery over the embedded run of the same round.

    The two ran back to back, so what the machine did to both largely cancels; two separate
    least-of-N figures do not pair up that way (each may come from a different minute)."""
    return [
        ratio(run.cpu_us_per_delivery, ref.cpu_us_per_delivery)
        for run, ref in zip(runs, embedded, strict=True)
    ]


def print_table(args: argparse.Namespace, runs: dict[str, list[Result]]) -> None:
    print(
        f"{args.senders} senders x {args.messages} messages into one room, "
        f"{args.receivers} receivers; least node CPU of {args.repeat}, and the median of the "
        "ratios of runs paired with the embedded run of their round"
    )
    embedded = runs[EMBEDDED]
    least = cheapest(embedded)
    print(
        "| setup | deliveries/s | vs embedded | node CPU µs/delivery | vs embedded "
        "| paired ratios: median [range] "
        "| Redis commands/say | Redis CPU µs/say | idle nodes CPU µs/say "
        "| Redis reads/say (exchanges) | Redis writes/say | lone say: reads | writes | commands "
        "| node syscalls/say | node wake-ups/say | node system CPU share "
        "| receiving-only node CPU µs/say |"
    )
    print("| --- " * 18 + "|")
    for name, results in runs.items():
        result = cheapest(results)
        pairs = paired_ratios(results, embedded)
        print(
            f"| {name} | {result.rate:,.0f} | {result.rate / least.rate:.2f} "
            f"| {result.cpu_us_per_delivery:.2f} "
            f"| {ratio(result.cpu_us_per_delivery, least.cpu_us_per_delivery):.2f} "
            f"| {statistics.median(pairs):.2f} [{min(pairs):.2f}\N{EN DASH}{max(pairs):.2f}] "
            f"| {result.redis_commands_per_say:.1f} | {result.redis_cpu_us_per_say:.1f} "
            f"| {result.idle_cpu_us_per_say:.1f} | {result.redis_reads_per_say:.2f} "
            f"| {result.redis_writes_per_say:.2f} | {lone_cells(result.lone)} "
            f"| {result.node_syscalls_per_say:.1f} | {result.node_wakeups_per_say:.2f} "
            f"| {ratio(result.node_sys_cpu, result.node_cpu):.0%} "
            f"| {result.receiving_cpu_us_per_say:.1f} |"
        )


def ratio(a: float, b: float) -> float:
    """a / b, or nan when b is 0 (a load too small for the clock's 10 ms ticks)."""
    return a / b if b else float("nan")


def lone_cells(lone: Counters | None) -> str:
    if lone is None:
        return "- | - | -"
    return f"{lone.reads:.2f} | {lone.writes:.2f} | {lone.commands:.1f}"


if __name__ == "__main__":
    asyncio.run(main())
