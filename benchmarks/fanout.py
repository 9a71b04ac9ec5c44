#!/usr/bin/env python3
"""Room fan-out benchmark: imchat, side by side with InspIRCd and miniircd.

R receivers join one room, one sender says M messages of ~100 characters; the script prints
deliveries per second, p50/p99 latency (send stamp in the text, read by probe receivers)
and the server's CPU seconds and peak RSS. Every server runs as a subprocess on 127.0.0.1,
pinned to CPU 0; this process (all clients, one event loop, uvloop if installed) to CPU 1.
Scenarios: ``flat`` (flat out), ``paced`` (fixed delivery rate, for latency), ``idle``
(memory per idle connection) and ``sweep`` (cost of one broadcast against R, with and
without idle users in other rooms). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import loadgen
from ircbench import IrcDriver, MiniircdDriver, inspircd_server, miniircd_server
from loadgen import Driver, ImchatDriver, broadcast, idle_memory
from serverproc import ServerProc, imchat_server

FACTORIES: dict[str, tuple[Callable[[Path, Path, int | None], ServerProc], type[Driver]]] = {
    "imchat": (lambda tmp, log, cpu: imchat_server(tmp / "data", log, cpu), ImchatDriver),
    "inspircd": (inspircd_server, IrcDriver),
    "miniircd": (miniircd_server, MiniircdDriver),
}


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (servers inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


T = TypeVar("T")


def run_with_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run a helper process's ``main`` on uvloop where it is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@contextlib.asynccontextmanager
async def running(kind: str, workdir: Path, cpu: int | None) -> AsyncIterator[Driver]:
    """A fresh server of ``kind`` (own temp dir, so history and memory start empty)."""
    factory, driver_cls = FACTORIES[kind]
    tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    server = factory(tmp, tmp / "server.log", cpu)
    try:
        await server.start()
        yield driver_cls(kind, server)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class PySpy:
    """``py-spy record`` of a PID, only around the measured part of a run."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # let it attach before the load starts

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def summarize_profile(raw: Path, top: int = 12) -> str:
    """Hot spots from py-spy's collapsed stacks: self time by function and by line, and
    inclusive time of the server's own functions (``imchat/`` frames)."""
    by_line: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for entry in raw.read_text().splitlines():
        stack, _, count = entry.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        by_line[frames[-1]] += n
        by_func[_function(frames[-1])] += n
        for func in {_function(f) for f in frames if "imchat/" in f and "cli.py" not in f}:
            incl[func] += n
    out = [f"{total} samples"]
    for title, counter in (
        ("self time, by function", by_func),
        ("self time, by line", by_line),
        ("inclusive time, imchat functions", incl),
    ):
        out.append(f"-- top {top}: {title} --")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(out)


def _function(frame: str) -> str:
    """``func (path/file.py:123)`` without the line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# ---- scenarios -------------------------------------------------------------------------


def too_many(kind: str, connections: int) -> bool:
    """True (and says so) if ``kind`` cannot hold that many connections."""
    limit = FACTORIES[kind][1].max_connections
    if limit is not None and connections > limit:
        print(f"  {kind}: skipped, {connections} connections > its limit of {limit}", flush=True)
        return True
    return False


async def scenario_broadcast(
    args: argparse.Namespace,
    kind: str,
    *,
    receivers: int,
    messages: int,
    rate: float = 0.0,
    idle_other: int = 0,
    label: str,
    profile: Path | None = None,
) -> dict[str, Any] | None:
    if too_many(kind, receivers + 1 + idle_other):
        return None
    async with running(kind, args.workdir, args.server_cpu) as driver:
        spy = PySpy(driver.server.pid, profile) if profile is not None else None
        result = await broadcast(
            driver,
            receivers=receivers,
            messages=messages,
            rate=rate,
            window=args.window,
            probes=args.probes,
            verify=args.verify,
            idle_other=idle_other,
            idle_room_size=args.room_size,
            text_size=args.text_size,
            around=(spy.start, spy.stop) if spy else None,
            settle_after=args.settle_after if idle_other else 0.0,
        )
        if not driver.server.alive():
            print(f"  {kind} died:\n{driver.server.log_tail()}", file=sys.stderr)
    row = {"scenario": label, **asdict(result), "cpu_us_per_delivery": result.cpu_us_per_delivery}
    print("  " + format_row(row), flush=True)
    if spy is not None and profile is not None and profile.exists():
        summary = summarize_profile(profile)
        profile.with_suffix(".top.txt").write_text(summary + "\n")
        print(summary, flush=True)
    return row


async def run_flat(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for kind in args.servers:
        prof = args.profile / f"{kind}-flat.txt" if args.profile and kind == "imchat" else None
        row = await scenario_broadcast(
            args, kind, receivers=args.receivers, messages=args.messages, label="flat", profile=prof
        )
        rows += [row] if row else []
    return rows


async def run_paced(args: argparse.Namespace) -> list[dict[str, Any]]:
    messages = max(1, round(args.paced_rate * args.duration / args.receivers))
    rows = []
    for kind in args.servers:
        row = await scenario_broadcast(
            args,
            kind,
            receivers=args.receivers,
            messages=messages,
            rate=args.paced_rate,
            label="paced",
        )
        rows += [row] if row else []
    return rows


async def run_idle(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for kind in args.servers:
        if too_many(kind, args.idle):
            continue
        prof = args.profile / f"{kind}-idle.txt" if args.profile and kind == "imchat" else None
        async with running(kind, args.workdir, args.server_cpu) as driver:
            spy = PySpy(driver.server.pid, prof) if prof is not None else None
            row = {
                "scenario": "idle",
                **await idle_memory(
                    driver,
                    connections=args.idle,
                    room_size=args.room_size,
                    sessions=args.idle_as == "sessions",
                    parallel=args.idle if args.all_at_once else 0,
                    around=(spy.start, spy.stop) if spy else None,
                    idle_seconds=args.idle_seconds,
                ),
            }
        print(
            f"  {kind:9} idle={row['connections']} {row['as']}, rooms of {row['room_size']}: "
            f"{row['kb_per_connection']:.1f} KiB/conn (RSS {row['rss_before_kb'] / 1024:.0f}"
            f" -> {row['rss_after_kb'] / 1024:.0f} MiB), connect {row['connect_s']:.1f}s, "
            f"settle {row['settle_s']:.1f}s, {row['parallel']} at a time, lost {row['lost']}; "
            f"CPU-s while connecting: server {row['server_cpu_s']:.2f}, "
            f"generator {row['loadgen_cpu_s']:.2f}, other {row['other_cpu_s']:.2f}; "
            f"idle afterwards: server {row['idle_cpu_ms_per_s']:.1f} ms CPU per second",
            flush=True,
        )
        rows.append(row)
        if prof is not None and prof.exists():
            summary = summarize_profile(prof)
            prof.with_suffix(".top.txt").write_text(summary + "\n")
            print(summary, flush=True)
    return rows


async def run_sweep(
    args: argparse.Namespace, idle: tuple[int, ...] | None = None
) -> list[dict[str, Any]]:
    """The sweep of each server, with each count of idle users in ``idle`` (default: none,
    then ``--sweep-idle`` if it is set)."""
    counts = idle if idle is not None else (0, args.sweep_idle) if args.sweep_idle else (0,)
    rows = []
    for kind in args.servers:
        for idle_other in counts:
            for receivers in args.sweep:
                messages = max(args.sweep_min_messages, args.sweep_deliveries // receivers)
                row = await scenario_broadcast(
                    args,
                    kind,
                    receivers=receivers,
                    messages=messages,
                    rate=args.sweep_rate,
                    idle_other=idle_other,
                    label=f"sweep+{idle_other}idle" if idle_other else "sweep",
                )
                rows += [row] if row else []
        print(sweep_fit([r for r in rows if r["server"] == kind]), flush=True)
    return rows


def sweep_fit(rows: list[dict[str, Any]]) -> str:
    """Least-squares fit of server CPU per broadcast = a + b*R, per sweep variant.

    Paced (the default) each broadcast is handled on its own, one write per recipient; flat
    out the server coalesces several messages into one write, so the cost per recipient
    depends on how far behind it runs, not only on R.
    """
    out = []
    for label in sorted({r["scenario"] for r in rows}):
        pts = sweep_points(rows, label)
        if len(pts) < 2:
            continue
        a, b, r2 = linear_fit(pts)
        per = ", ".join(f"R={x}: {y / x:.2f}" for x, y in pts)
        out.append(
            f"  {rows[0]['server']} {label}: CPU per broadcast = {a:.0f} us + "
            f"{b:.2f} us x R (r2={r2:.3f}); us per recipient: {per}"
        )
    return "\n".join(out)


def sweep_points(rows: list[dict[str, Any]], label: str) -> list[tuple[int, float]]:
    """(R, server CPU µs per broadcast) of a sweep variant's complete runs."""
    return [
        (r["receivers"], r["server_cpu_s"] / r["messages"] * 1e6)
        for r in rows
        if r["scenario"] == label and r["complete"]
    ]


def linear_fit(pts: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least squares y = a + b*x: (a, b, r²)."""
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else math.nan
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - a - b * x) ** 2 for x, y in pts)
    r2 = 1 - ss_res / ss_tot if ss_tot else math.nan
    return a, b, r2


# ---- output ----------------------------------------------------------------------------


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['server']:9} {r['scenario']:14} R={r['receivers']:<5} M={r['messages']:<5} "
        f"{r['delivered']}/{r['expected']} in {r['seconds']:.2f}s = "
        f"{r['deliveries_per_s']:>9,.0f}/s  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  "
        + (
            f"ok p50/p99 {r['ok_p50_ms']:.2f}/{r['ok_p99_ms']:.2f} ms  "
            if math.isfinite(r.get("ok_p50_ms", math.nan))  # the server replies
            else ""
        )
        + f"srv cpu {r['server_cpu_s']:.2f}s "
        f"({r['cpu_us_per_delivery']:.2f} us/dlv)  peak RSS {r['server_hwm_kb'] / 1024:.0f}"
        f" MiB  loadgen cpu {r['loadgen_cpu_s']:.2f}s  other {r['other_cpu_s']:.2f}s"
        f"  lost {r['lost']}"
        + (f"  errors {r['errors']}" if r["errors"] else "")
        + (f"  verified {r['verified']}/{r['receivers']}" if r["verified"] is not None else "")
    )


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """imchat / other for every scenario both ran (same scenario label, R and idle users)."""
    key = ("scenario", "receivers", "idle_other")
    metrics = (
        ("deliveries_per_s", "deliveries/s"),
        ("p99_ms", "p99"),
        ("cpu_us_per_delivery", "CPU/delivery"),
        ("kb_per_connection", "KiB/conn"),
        ("server_hwm_kb", "peak RSS"),
    )
    out = []
    mine = [r for r in rows if r["server"] == "imchat"]
    for other in ("inspircd", "miniircd"):
        for r in mine:
            match = next(
                (
                    o
                    for o in rows
                    if o["server"] == other and all(o.get(k) == r.get(k) for k in key)
                ),
                None,
            )
            if match is None:
                continue
            parts = [
                f"{label} {r[m] / match[m]:.2f}"
                for m, label in metrics
                if m in r and m in match and match[m]
            ]
            out.append(
                f"imchat / {other:8} {r['scenario']:14} R={r.get('receivers', '-')}: "
                + ", ".join(parts)
            )
    return out


SCENARIOS = {"flat": run_flat, "paced": run_paced, "idle": run_idle, "sweep": run_sweep}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenario",
        default="flat",
        help="comma list of flat, paced, idle, sweep, or 'all' (default flat)",
    )
    p.add_argument(
        "--servers",
        default="imchat",
        help="comma list of imchat, inspircd, miniircd, or 'all' (default imchat)",
    )
    p.add_argument("-R", "--receivers", type=int, default=1000)
    p.add_argument("-M", "--messages", type=int, default=2000)
    p.add_argument("--paced-rate", type=float, default=50_000, help="deliveries/s (paced)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (paced)")
    p.add_argument("--idle", type=int, default=10_000, help="idle connections (idle)")
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="idle: seconds the server's CPU is read for once everyone sits idle",
    )
    p.add_argument(
        "--idle-as",
        choices=("users", "sessions"),
        default="users",
        help="idle: one user per connection, or (imchat) sessions of one account",
    )
    p.add_argument(
        "--all-at-once",
        action="store_true",
        help="idle: every connection's handshake in flight at once (a reconnect storm), "
        "instead of the server kind's usual parallelism",
    )
    p.add_argument(
        "--room-size",
        type=int,
        default=100,
        help="members per room for idle connections (idle, sweep)",
    )
    p.add_argument(
        "--sweep", default="10,100,500,1000,2000,5000", help="receiver counts for the sweep"
    )
    p.add_argument(
        "--sweep-idle",
        type=int,
        default=2000,
        help="idle users in other rooms for the sweep's second pass (0: none)",
    )
    p.add_argument(
        "--sweep-deliveries",
        type=int,
        default=100_000,
        help="deliveries per sweep point (M = this / R)",
    )
    p.add_argument(
        "--sweep-rate",
        type=float,
        default=20_000,
        help="deliveries/s the sweep is paced at, low enough that broadcasts do not overlap "
        "(0: flat out)",
    )
    p.add_argument(
        "--settle-after",
        type=float,
        default=0.0,
        help="with idle users elsewhere: seconds to wait once everyone has joined before "
        "measuring, so the one-off work of their arrival (imchat: the heap's collection and "
        "freeze 1-2 s after its population settles) stays out of the measured part (0: "
        "measure once the clients are quiet, the default)",
    )
    p.add_argument("--sweep-min-messages", type=int, default=20)
    p.add_argument(
        "--window",
        type=int,
        default=0,
        help="flat out: messages the sender may be ahead of the receivers "
        "(0: about 50,000 deliveries' worth, 8 to 64 messages)",
    )
    p.add_argument("--probes", type=int, default=100, help="receivers that read timestamps")
    p.add_argument("--text-size", type=int, default=100)
    p.add_argument(
        "--verify",
        action="store_true",
        help="every receiver checks it got each message exactly once",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the imchat server in 'flat' (and while 'idle' connects) into DIR",
    )
    p.add_argument(
        "--source",
        help="loopback address the clients connect from (e.g. 127.0.0.9): clear of ports "
        "another program's crowd has bound on a shared machine",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server/loadgen to CPUs")
    p.add_argument("--json", type=Path, help="also write all results to this file")
    p.add_argument(
        "--timeout", type=float, default=3600, help="give up after this many seconds in all"
    )
    p.add_argument("--workdir", type=Path, default=None, help="temp dir for server data")
    args = p.parse_args(argv)
    args.scenario = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    args.servers = list(FACTORIES) if args.servers == "all" else args.servers.split(",")
    for name in args.scenario:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    for name in args.servers:
        if name not in FACTORIES:
            p.error(f"unknown server {name!r}")
    args.sweep = [int(x) for x in args.sweep.split(",")]
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    args.server_cpu = 0 if pin else None
    args.loadgen_cpu = 1 if pin else None
    return args


async def amain(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imchat-bench-", dir=args.workdir) as work:
        args.workdir = Path(work)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        for name in args.scenario:
            print(f"== {name} ==", flush=True)
            rows += await SCENARIOS[name](args)
    if len({r["server"] for r in rows}) > 1:
        print("== ratios (imchat / other) ==")
        print("\n".join(ratios(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    ok = all(r["complete"] and r.get("verified") in (None, r.get("receivers")) for r in rows)
    return 0 if ok and rows else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source:
        loadgen.Driver.source = args.source  # every driver's clients, unless one sets its own
    # SIGTERM unwinds like Ctrl-C, so every server started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    limit = raise_fd_limit()
    if args.loadgen_cpu is not None:
        os.sched_setaffinity(0, {args.loadgen_cpu})
    loop_name = "asyncio"
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
        loop_name = "uvloop"
    print(
        f"loop={loop_name} fds={limit} server cpu={args.server_cpu} "
        f"loadgen cpu={args.loadgen_cpu} cores={os.cpu_count()}",
        flush=True,
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(amain(args), args.timeout))


if __name__ == "__main__":
    sys.exit(main())
