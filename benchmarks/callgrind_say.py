"""Server instructions per ``say``, counted by callgrind: a figure the noisy machine cannot move.

Wall-clock and CPU-second figures on a shared 2-core machine swing by ±20 % between runs;
instruction counts do not (±0.5 %). This starts ``imchat server`` (SQLite, history on, rate
limit off) under ``valgrind --tool=callgrind --separate-threads=yes``, connects one sender
and ``-R`` receivers in one room, zeroes the counters (``callgrind_control -z``), sends
``-M`` says in bursts of ``--window`` (each burst waits for its ``ok`` replies and for
every receiver to have its messages), dumps the counters (``callgrind_control -d``) and
prints instructions per message: the event loop's thread, the SQLite writer's, and the
total. Server-side only; the kernel's share of a send or receive is not counted. The last
burst is followed by one ``search`` (counted): the SQLite store writes search rows in a
later transaction, and a search first writes every row that waits, so the count holds all
of the messages' index work. Run with ``IMCHAT_INDEX_FLUSH_SECONDS=3600`` to stop the
store's idle flush (50 ms: 1 ms of real time under valgrind), which would otherwise write
the rows after every burst where a loaded server writes them every 1,024 messages.

    .venv/bin/python benchmarks/callgrind_say.py -R 1 -M 2000
    .venv/bin/python benchmarks/callgrind_say.py -R 100 -M 1000

``--pythonpath DIR`` runs the server from another checkout (``git archive REV imchat``),
for before/after figures from one run. ``--redis URL`` runs it as a cluster node on that
Redis (a key prefix of its own, deleted afterwards): the node's side of the Redis path
(packing the append, reading its reply and the published envelope, delivering it), Redis's
own work not included.

    .venv/bin/python benchmarks/callgrind_say.py -R 40 -M 1000 --redis redis://127.0.0.1:6379/0

``--sender-node`` (with ``--redis``) connects the sender to a second node, run without
valgrind on the same Redis and prefix, so the counted node only receives: what a node of a
room spread over nodes pays per envelope published elsewhere (reading it from its
subscription and handing it to its ``-R`` receivers), no append, no ``ok``.

    .venv/bin/python benchmarks/callgrind_say.py -R 13 -M 2000 --redis URL --sender-node

``--senders S`` (with ``--redis``) has S senders say at once, each a burst of ``--window``,
``--senders-here H`` of them on the counted node and the rest on the second node: a node of
a room spread over 3 nodes, senders spread too, is ``--senders 3 --senders-here 1`` (its
own senders' appends, and the envelopes the other nodes' senders publish). Figures are per
message said by all of them. Over Redis there is no closing ``search``: the Redis store
has no index work to flush, and its search scans the room in Python (a cost per message
stored that no ``say`` pays).

    .venv/bin/python benchmarks/callgrind_say.py -R 13 -M 3000 --window 16 --redis URL \
        --senders 3 --senders-here 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serverproc import LOOPBACK_CROWD, delete_prefix

from imchat.protocol import encode_message

_HEADER = struct.Struct(">I").unpack_from
_LISTENING = re.compile(r"listening on \S+:(\d+)")


class Counting(asyncio.Protocol):
    """Counts frames; remembers ``ok`` replies (the sender's)."""

    def __init__(self) -> None:
        self.rest = b""
        self.frames = 0
        self.oks = 0
        self.changed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        data = self.rest + data
        pos = 0
        while pos + 4 <= len(data):
            end = pos + 4 + _HEADER(data, pos)[0]
            if end > len(data):
                break
            if b'"type":"ok"' in data[pos + 4 : end]:
                self.oks += 1
            self.frames += 1
            pos = end
        self.rest = data[pos:]
        self.changed.set()

    async def until(self, done: object) -> None:
        while not done():  # type: ignore[operator]
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 120)


async def client(port: int, nick: str) -> tuple[asyncio.Transport, Counting]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Counting, "127.0.0.1", port)
    transport.write(
        encode_message({"type": "hello", "proto": 1, "nick": nick, "id": 1})
        + encode_message({"type": "join", "room": "bench", "id": 2})
    )
    await proto.until(lambda: proto.frames >= 2)
    return transport, proto  # type: ignore[return-value]


def dumped_totals(out: Path) -> dict[str, int]:
    """Instructions by thread name from the latest dump files (one per thread)."""
    totals: dict[str, int] = {}
    for path in sorted(out.parent.glob(out.name + "*")):
        text = path.read_text(errors="replace")
        summary = re.search(r"^summary: (\d+)", text, re.M) or re.search(
            r"^totals: (\d+)", text, re.M
        )
        if summary is None or not re.search(r"^part: 1", text, re.M):
            continue
        thread = re.search(r"^thread: (\d+)", text, re.M)
        totals[thread.group(1) if thread else "?"] = int(summary.group(1))
    return totals


async def listening_port(log_path: Path, what: str) -> int:
    for _ in range(1200):
        await asyncio.sleep(0.25)
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
    sys.exit(f"{what} did not start: " + log_path.read_text()[-2000:])


async def run(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    if args.sender_node and not args.redis:
        sys.exit("--sender-node needs --redis")
    here = args.senders if args.senders_here is None else args.senders_here
    if args.sender_node:
        here = 0
    if not 0 <= here <= args.senders or (here < args.senders and not args.redis):
        sys.exit("--senders-here: 0 to --senders, fewer only with --redis")
    if args.messages % args.senders:
        sys.exit("-M must be a multiple of --senders")
    work = Path(tempfile.mkdtemp(prefix="imchat-cg-"))
    out = work / "callgrind.out"
    env = dict(os.environ, IMCHAT_IDLE_TIMEOUT="3600", IMCHAT_MAX_CONNECTIONS_PER_IP="0")
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    server = [
        sys.executable,
        "-m",
        "imchat",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(work / "data"),
        "--rate",
        "0",
        *LOOPBACK_CROWD,
    ]
    prefix = f"imchat-cg-{os.getpid()}-{int(time.time())}:"
    if args.redis:
        server += ["--redis", args.redis, "--redis-prefix", prefix]
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        *server,
    ]
    log = (work / "server.log").open("w+")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    other: subprocess.Popen[bytes] | None = None
    try:
        port = await listening_port(work / "server.log", "server")
        other_port = port
        if here < args.senders:
            other_argv = [a if a != str(work / "data") else str(work / "data2") for a in server]
            other_log = (work / "sender-node.log").open("w+")
            other = subprocess.Popen(
                other_argv, stdout=other_log, stderr=subprocess.STDOUT, env=env, cwd=work
            )
            other_port = await listening_port(work / "sender-node.log", "sender node")
        receivers = [await client(port, f"r{i}") for i in range(args.receivers)]
        senders = [
            await client(port if i < here else other_port, f"s{i}") for i in range(args.senders)
        ]
        await asyncio.sleep(2.0)  # joined events settled
        base = [p.frames for _, p in receivers]
        # Warm up (first statements prepared, caches filled), then count.
        await burst(senders, receivers, base, [s.oks for _, s in senders], 0, args.window)
        base = [p.frames for _, p in receivers]
        oks = [s.oks for _, s in senders]
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        t0 = time.monotonic()
        each = args.messages // args.senders
        for start in range(0, each, args.window):
            await burst(senders, receivers, base, oks, start, min(args.window, each - start))
        if not args.redis:
            sender_t, sender = senders[0]
            answered = sender.oks
            sender_t.write(encode_message({"type": "search", "room": "bench", "text": "nomatch"}))
            await sender.until(lambda: sender.oks > answered)
        took = time.monotonic() - t0
        for old in out.parent.glob(out.name + "*"):
            old.unlink()
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        totals = dumped_totals(out)
    finally:
        proc.terminate()
        proc.wait(60)
        if other is not None:
            other.terminate()
            other.wait(60)
        if args.redis:
            delete_prefix(args.redis, prefix)
    total = sum(totals.values())
    print(
        f"R={args.receivers} M={args.messages} window={args.window}"
        f" ({took:.1f} s under valgrind): server instructions per message"
    )
    for thread, count in sorted(totals.items()):
        print(f"  thread {thread}: {count / args.messages:12,.0f}")
    print(f"  total:    {total / args.messages:12,.0f}")
    if args.receivers:
        print(f"  per delivery: {total / args.messages / args.receivers:12,.0f}")
    print(f"  (callgrind's dumps: {work})")


async def burst(
    senders: list[tuple[asyncio.Transport, Counting]],
    receivers: list[tuple[asyncio.Transport, Counting]],
    base: list[int],
    oks: list[int],
    start: int,
    n: int,
) -> None:
    """Every sender says ``n`` messages at once (its ``start``-th to the ``start + n``-th);
    returns when each has its ``ok`` replies and every receiver all of their messages."""
    text = "x" * 100
    for k, (sender_t, _) in enumerate(senders):
        sender_t.write(
            b"".join(
                encode_message({"type": "say", "room": "bench", "text": f"{k} {start + i} {text}"})
                for i in range(n)
            )
        )
    for (_, sender), first_ok in zip(senders, oks, strict=True):
        await sender.until(lambda s=sender, f=first_ok: s.oks >= f + start + n)
    said = len(senders) * (start + n)
    for (_, proto), first in zip(receivers, base, strict=True):
        await proto.until(lambda p=proto, f=first: p.frames >= f + said)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-R", "--receivers", type=int, default=1)
    parser.add_argument("-M", "--messages", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--pythonpath", default="")
    parser.add_argument("--redis", default="", help="run the server as a node on this Redis")
    parser.add_argument(
        "--sender-node",
        action="store_true",
        help="the sender on a second node (with --redis): count a node that only receives",
    )
    parser.add_argument("--senders", type=int, default=1, help="senders saying at once")
    parser.add_argument(
        "--senders-here",
        type=int,
        default=None,
        help="of --senders, how many on the counted node (default all; the rest on a second "
        "node, with --redis)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
