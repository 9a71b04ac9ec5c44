#!/usr/bin/env python3
"""A crowd leaving at once: what it costs the server, and everyone else's ``ok`` meanwhile.

    python benchmarks/departure.py [--users 10000] [--room-size 100] [--repeat 3] [--redis URL]

``--users`` guests (``crowd.py``, from 127.0.0.2) connect to one embedded server and join
rooms of ``--room-size``; one more user (the pulse) says a message in a room of its own
every ``--every`` seconds, one at a time, and times each ``ok`` (sent after the commit).
Then the whole crowd drops its connections at once, as a network blip or a restarted proxy
would. Reported per run: the server's CPU and the time until it is quiet again (under 2 % of
a core more than the pulse alone, over a quarter second), and the pulse's ``ok`` latency
before and during the departure. With ``--redis URL`` the server is one node over that
Redis (a key prefix of its own each run, its keys deleted afterwards), and Redis's CPU and
commands during the departure are reported too (``INFO``; other clients of that Redis count).

Each guest's leave is a store operation (its identity is held for a resume), and the
writer that commits it also commits every message: a leave that costs in proportion to the
users still there makes a departure quadratic, and the pulse's ``ok`` waits for all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import redis_counters
from fanout import PySpy, raise_fd_limit, run_with_uvloop, summarize_profile
from loadgen import percentile
from report import first_line, last_line, reap, spawn
from serverproc import HOST, ServerProc, delete_prefix, imchat_server, quiet
from storm import Frames, frame

HERE = Path(__file__).resolve().parent
#: The departure is over at the end of the first step this long in which the server is quiet.
QUIET_STEP = 0.25


class Pulse:
    """One user saying a message at a steady pace, one at a time, timing each ``ok``."""

    def __init__(self, port: int, every: float) -> None:
        self.port = port
        self.every = every
        #: (monotonic time the say was sent, seconds until its ok).
        self.acks: list[tuple[float, float]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        frames = Frames(reader)
        try:
            writer.write(frame({"type": "hello", "proto": 1, "nick": "pulse", "id": "h"}))
            assert (await frames.reply("h"))["type"] == "welcome"
            writer.write(frame({"type": "join", "room": "pulse", "id": "j"}))
            assert (await frames.reply("j"))["type"] == "ok"
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                say = {"type": "say", "room": "pulse", "text": f"beat {n}", "id": f"s{n}"}
                writer.write(frame(say))
                reply = await frames.reply(f"s{n}")
                if reply["type"] != "ok":
                    raise RuntimeError(f"the pulse's say was refused: {reply}")
                self.acks.append((sent, time.monotonic() - sent))
                await asyncio.sleep(max(0.0, sent + self.every - time.monotonic()))
        finally:
            writer.close()

    def between(self, start: float, end: float) -> list[float]:
        return [ack for sent, ack in self.acks if start <= sent < end]


def summary(acks: list[float]) -> dict[str, float]:
    if not acks:
        return {"count": 0}
    ordered = sorted(acks)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    prefix = f"imchat-departure-{uuid.uuid4().hex[:8]}:"
    extra = ["--redis", args.redis, "--redis-prefix", prefix] if args.redis else []
    server: ServerProc = imchat_server(work / "data", work / "server.log", args.server_cpu, extra)
    children: list[asyncio.subprocess.Process] = []
    try:
        port = await server.start(30.0)
        argv = [
            *("--ports", str(port), "--source", "127.0.0.2", "--users", str(args.users)),
            *("--room-size", str(args.room_size), "--nick-prefix", "d"),
        ]
        crowd = await spawn(children, HERE / "crowd.py", argv, args.loadgen_cpu)
        arrived = await first_line(crowd, "the crowd")
        await quiet([server], 60.0)  # every arrival's work done
        pulse = Pulse(port, args.every)
        beating = asyncio.create_task(pulse.run())
        pulse_cpu0, pulse_start = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(args.before)
        spy = PySpy(server.pid, args.profile) if args.profile else None
        if spy is not None:
            spy.start()
        redis0 = redis_counters(args.redis or None)
        cpu0, left = server.cpu_seconds(), time.monotonic()
        pulse_cpu = (cpu0 - pulse_cpu0) / (left - pulse_start)
        held = await last_line(crowd)
        # Quiet: a quarter second in which the server did little more than answer the
        # pulse. That last quarter is not the departure's.
        busy = pulse_cpu + 0.02
        settled = await quiet([server], args.limit, busy=busy, step=QUIET_STEP) - QUIET_STEP
        cpu = server.cpu_seconds() - cpu0
        in_redis = redis_counters(args.redis or None) - redis0
        if spy is not None:
            spy.stop()
            print(summarize_profile(args.profile), flush=True)
        pulse.stop.set()
        await beating
        result = {
            "users": arrived["users"],
            "connect_s": round(arrived["connect_s"], 2),
            "lost_while_held": held["lost"],
            "departure_s": round(settled, 2),
            "server_cpu_s": round(cpu, 3),
            "pulse_cpu_per_s": round(pulse_cpu, 3),
            "ok_before": summary(pulse.between(left - args.before, left)),
            "ok_during": summary(pulse.between(left, left + settled + QUIET_STEP)),
        }
        if args.redis:
            result |= {"redis_cpu_s": round(in_redis.cpu, 3), "redis_commands": in_redis.commands}
        return result
    finally:
        await reap(children)
        server.stop(30.0)
        if args.redis:
            delete_prefix(args.redis, prefix)


async def main_async(args: argparse.Namespace) -> None:
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="imchat-departure-") as work:
            run = await one_run(args, Path(work))
        print(json.dumps(run), flush=True)
        runs.append(run)
    keys = ("departure_s", "server_cpu_s")
    medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    worst = statistics.median(r["ok_during"]["max_ms"] for r in runs)
    medians["ok_during_max_ms"] = round(worst, 2)
    print(json.dumps({"median": medians}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--every", type=float, default=0.02, help="seconds between the pulse's says")
    p.add_argument("--before", type=float, default=2.0, help="seconds of pulse before")
    p.add_argument("--limit", type=float, default=120.0, help="give up waiting for quiet")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--redis", default="", help="one node over this Redis (redis://...)")
    p.add_argument("--profile", type=Path, help="py-spy the server's departure into FILE")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/crowd to CPUs")
    args = p.parse_args()
    args.server_cpu, args.loadgen_cpu = (None, None) if args.no_pin else (0, 1)
    raise_fd_limit()
    run_with_uvloop(main_async(args))


if __name__ == "__main__":
    main()
