#!/usr/bin/env python3
"""Every target of issue 16 in one run: one markdown table, imchat beside InspIRCd and miniircd.

    .venv/bin/python benchmarks/report.py [--wide] [--json FILE] [--table FILE] [--quick]

Each measurement gets a fresh server (the 50,000-connection run, ``--wide``, keeps its three
nodes for its with/without pairs), and every scenario is the existing one, imported: flat
out, paced, the R=1 cost and the sweep from ``fanout.py`` (``loadgen.broadcast``), idle
memory and connect storms from ``fanout.run_idle`` (``loadgen.idle_memory``), Redis against
embedded from ``cluster.run_setups``; the idle users of ``--wide`` come from ``crowd.py``
processes. miniircd is skipped where it cannot hold the connections (``select()``: more than
1,015). The header describes the machine and the CPU the rest of the machine used meanwhile
(``other``: noise). ``--quick`` shrinks every size (a smoke test, figures meaningless).
See ``benchmarks/README.md`` ("One table").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import cluster
import fanout
from fanout import FACTORIES, linear_fit, run_idle, run_sweep, scenario_broadcast, sweep_points
from loadgen import ImchatDriver, broadcast
from serverproc import (
    ServerProc,
    delete_prefix,
    imchat_server,
    machine_busy_seconds,
    pinned,
    quiet,
)

HERE = Path(__file__).resolve().parent
SERVERS = ("imchat", "inspircd", "miniircd")
TITLES = {"imchat": "imchat", "inspircd": "InspIRCd", "miniircd": "miniircd"}
#: "Flat in idle users elsewhere": with ÷ without at most this (this machine's noise is
#: ±20 % between runs of the same code).
FLAT = 1.25
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Sizes:
    #: Flat out: (R, messages, rate goal ÷ InspIRCd, CPU goal ÷ InspIRCd or 0 = reported).
    flat: tuple[tuple[int, int, float, float], ...]
    windows: tuple[int, ...]
    r1_messages: int
    paced_receivers: int
    paced_rate: float
    paced_seconds: float
    idle: int
    idle_seconds: float
    room_size: int
    #: cluster.py's load: receivers, senders, messages per sender; runs per setup.
    cluster: tuple[int, int, int]
    cluster_repeat: int
    #: cluster.py's ``--only``: setups whose name contains this (and the embedded one).
    cluster_only: str
    sweep: tuple[int, ...]
    #: The sweep's R compared with and without idle users (the others fit the line only).
    sweep_compare: tuple[int, ...]
    sweep_idle: int
    sweep_deliveries: int
    sweep_rate: float
    sweep_min_messages: int
    wide_idle: int
    wide_nodes: int
    wide_workers: int
    wide_receivers: tuple[int, ...]
    #: Deliveries of each ``--wide`` paced run (at ``sweep_rate``). At 100,000 sockets the
    #: machine's walk (~100 ms every ~3 s, round 13) is in every p99 of the run: a 5 s run
    #: saw one or two walks, and its p99 read 10 or 24 ms in either phase as they fell.
    wide_deliveries: int


FULL = Sizes(
    flat=((100, 20_000, 1.0, 0.0), (1000, 3000, 1.2, 0.8)),
    windows=(64, 256),
    r1_messages=30_000,
    paced_receivers=1000,
    paced_rate=50_000,
    paced_seconds=10.0,
    idle=10_000,
    idle_seconds=5.0,
    room_size=100,
    cluster=(40, 4, 20_000),
    cluster_repeat=5,
    cluster_only="",
    sweep=(10, 100, 1000),
    sweep_compare=(100, 1000),
    sweep_idle=10_000,
    sweep_deliveries=100_000,
    sweep_rate=20_000,
    sweep_min_messages=20,
    wide_idle=50_000,
    wide_nodes=3,
    wide_workers=3,
    wide_receivers=(100, 1000),
    wide_deliveries=400_000,
)

QUICK = Sizes(
    flat=((10, 100, 1.0, 0.0), (30, 40, 1.2, 0.8)),
    windows=(64, 256),
    r1_messages=200,
    paced_receivers=20,
    paced_rate=2000,
    paced_seconds=1.0,
    idle=60,
    idle_seconds=0.5,
    room_size=10,
    cluster=(4, 2, 300),
    cluster_repeat=1,
    cluster_only="1 node",
    sweep=(5, 20),
    sweep_compare=(20,),
    sweep_idle=60,
    sweep_deliveries=200,
    sweep_rate=4000,
    sweep_min_messages=10,
    wide_idle=150,
    wide_nodes=3,
    wide_workers=3,
    wide_receivers=(5, 20),
    wide_deliveries=200,
)

#: Per-process descriptor budget (the hard limit here is 20,000; keep room for the rest).
FD_BUDGET = 19_000


@dataclass
class Row:
    key: str
    label: str
    cells: dict[str, str]
    #: The figure the goal judges (imchat ÷ InspIRCd unless the label says otherwise).
    ratio: float | None
    goal: str
    #: None: reported only (no goal), or no figure to judge.
    met: bool | None
    values: dict[str, float | None] = field(default_factory=dict)

    def markdown(self, servers: list[str]) -> str:
        cells = [self.cells.get(s, "—") for s in servers]
        ratio = "—" if self.ratio is None or math.isnan(self.ratio) else f"{self.ratio:.2f}"
        if self.goal == "reported":
            met = "reported"
        elif self.met is None:
            met = "n/a"
        else:
            met = "met" if self.met else "**not met**"
        return "| " + " | ".join([self.label, *cells, ratio, self.goal, met]) + " |"


#: One server's outcome of one measurement: its figures, or why there are none.
Outcome = dict[str, Any] | str


class Report:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        if args.wide_idle is not None:
            self.sizes = dataclasses.replace(self.sizes, wide_idle=args.wide_idle)
        self.servers: list[str] = args.servers
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.errors: list[str] = []
        self.incomplete: list[str] = []
        self.base = fanout.parse_args(["--no-pin"] if args.no_pin else [])
        # Decided before this process pinned itself to the generator's core.
        self.base.server_cpu, self.base.loadgen_cpu = args.server_cpu, args.loadgen_cpu
        self.base.workdir = args.workdir
        self.redis_url: str | None = args.redis or None
        self._private_redis: cluster.PrivateRedis | None = None

    # ---- plumbing ------------------------------------------------------------------------

    def ns(self, **overrides: Any) -> argparse.Namespace:
        """fanout.py's arguments (its defaults, this run's pinning) with ``overrides``."""
        return argparse.Namespace(**{**vars(self.base), **overrides})

    async def guarded(self, what: str, work: Awaitable[Any]) -> Any:
        """``work``'s result, or None (logged, counted) if it failed: one broken
        measurement does not lose the rest of a 20-minute run."""
        try:
            return await work
        except Exception as exc:  # any failure is reported; the run goes on
            traceback.print_exc()
            self.errors.append(f"{what}: {exc!r}")
            print(f"  {what}: FAILED ({exc!r})", flush=True)
            return None

    def skipped(self, kind: str, connections: int) -> str | None:
        limit = FACTORIES[kind][1].max_connections
        if limit is not None and connections > limit:
            return f"skipped (> {limit:,} fds: `select()`)"
        return None

    async def broadcast(
        self, kind: str, what: str, *, connections: int, window: int = 0, **kw: Any
    ) -> Outcome:
        if reason := self.skipped(kind, connections):
            return reason
        row = await self.guarded(
            f"{what} {kind}", scenario_broadcast(self.ns(window=window), kind, label=what, **kw)
        )
        if row is None:
            return "error"
        if not row["complete"]:
            self.incomplete.append(f"{what} {kind}")
        return dict(row)

    async def trials(self, measure: Callable[[str], Awaitable[Outcome]]) -> dict[str, Outcome]:
        """Each server's outcome of ``measure``, taken ``--repeat`` times with the servers
        interleaved (imchat, InspIRCd, ..., imchat, InspIRCd, ...), so a neighbour's burst
        falls on one trial of one server rather than on all of a server's: the median of
        each figure, with the trials and their spread kept (see :func:`median_outcome`)."""
        runs: dict[str, list[Outcome]] = {k: [] for k in self.servers}
        for _ in range(self.args.repeat):
            for kind in self.servers:
                runs[kind].append(await measure(kind))
        return {kind: median_outcome(outcomes) for kind, outcomes in runs.items()}

    def get_redis(self) -> str:
        """The Redis of the cluster runs: ``--redis``, or one of this run's own."""
        if self.redis_url is None:
            with all_cores():
                self._private_redis = cluster.PrivateRedis()
            self.redis_url = self._private_redis.url
        return self.redis_url

    def close(self) -> None:
        if self._private_redis is not None:
            self._private_redis.stop()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + row.markdown(self.servers), flush=True)

    # ---- targets -------------------------------------------------------------------------

    async def flat(self) -> None:
        raw = self.raw.setdefault("flat", [])
        for receivers, messages, rate_goal, cpu_goal in self.sizes.flat:
            for window in self.sizes.windows:
                what = f"flat R={receivers} w={window}"
                print(f"== {what} ==", flush=True)
                res = await self.trials(
                    functools.partial(
                        self.broadcast,
                        what=what,
                        connections=receivers + 1,
                        window=window,
                        receivers=receivers,
                        messages=messages,
                    )
                )
                raw += [r for r in res.values() if isinstance(r, dict)]
                key = f"flat-{receivers}-{window}"
                label = f"flat out, R={receivers:,}, window {window}"
                self.add(
                    compare(
                        f"{key}-rate",
                        f"{label}: deliveries/s",
                        res,
                        "deliveries_per_s",
                        lambda v: f"{v / 1e6:.2f} M",
                        goal=rate_goal,
                        higher=True,
                    )
                )
                self.add(
                    compare(
                        f"{key}-cpu",
                        f"{label}: server µs CPU per delivery",
                        res,
                        "cpu_us_per_delivery",
                        lambda v: f"{v:.2f}",
                        goal=cpu_goal or None,
                        higher=False,
                    )
                )
                self.add(
                    Row(
                        f"{key}-ok",
                        f"{label}: `ok` p50 / p99 (after the commit)",
                        cells={
                            "imchat": cell(res.get("imchat"), "ok_p99_ms", ok_cell),
                            **{k: "no reply" for k in self.servers if k != "imchat"},
                        },
                        ratio=None,
                        goal="reported",
                        met=None,
                        values={"imchat": value(res.get("imchat"), "ok_p99_ms")},
                    )
                )

    async def r1(self) -> None:
        what = "flat R=1 w=64"
        print(f"== {what} ==", flush=True)
        messages = self.sizes.r1_messages
        profile_dir: Path | None = self.args.profile
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
        res = await self.trials(
            lambda k: self.broadcast(
                k,
                what,
                connections=2,
                window=64,
                receivers=1,
                messages=messages,
                profile=profile_dir / "imchat-r1.txt" if profile_dir and k == "imchat" else None,
            )
        )
        for r in res.values():
            if isinstance(r, dict):
                per_message = [t["server_cpu_s"] / t["messages"] * 1e6 for t in r["trials"]]
                r["cpu_us_per_message"] = statistics.median(per_message)
                r["spread"]["cpu_us_per_message"] = (min(per_message), max(per_message))
        self.raw["r1"] = [r for r in res.values() if isinstance(r, dict)]
        self.add(
            compare(
                "r1-cpu",
                "per-message cost, R=1 flat out (window 64): server µs CPU per message"
                + (" (profile: `--profile`)" if profile_dir else ""),
                res,
                "cpu_us_per_message",
                lambda v: f"{v:.1f}",
                goal=None,
                higher=False,
            )
        )

    async def paced(self) -> None:
        s = self.sizes
        receivers = s.paced_receivers
        what = f"paced R={receivers} {s.paced_rate:,.0f}/s"
        print(f"== {what} ==", flush=True)
        messages = max(1, round(s.paced_rate * s.paced_seconds / receivers))
        res = await self.trials(
            lambda k: self.broadcast(
                k,
                what,
                connections=receivers + 1,
                receivers=receivers,
                messages=messages,
                rate=s.paced_rate,
            )
        )
        self.raw["paced"] = [r for r in res.values() if isinstance(r, dict)]
        label = f"paced {s.paced_rate / 1000:,.0f}k deliveries/s, R={receivers:,}"
        self.add(
            compare(
                "paced-p99",
                f"{label}: p99 latency (p50), ms",
                res,
                "p99_ms",
                lambda v: f"{v:.1f}",
                goal=1.0,
                higher=False,
                extra=lambda r: f" ({r['p50_ms']:.1f})",
            )
        )
        self.add(
            compare(
                "paced-cpu",
                f"{label}: server µs CPU per delivery",
                res,
                "cpu_us_per_delivery",
                lambda v: f"{v:.2f}",
                goal=None,
                higher=False,
            )
        )

    async def idle(self, *, all_at_once: bool) -> dict[str, Outcome]:
        return await self.trials(lambda kind: self.idle_once(kind, all_at_once=all_at_once))

    async def idle_once(self, kind: str, *, all_at_once: bool) -> Outcome:
        n = self.sizes.idle
        if reason := self.skipped(kind, n):
            return reason
        args = self.ns(
            servers=[kind],
            idle=n,
            idle_seconds=self.sizes.idle_seconds,
            idle_as="users",
            all_at_once=all_at_once,
            room_size=self.sizes.room_size,
        )
        what = f"idle {n}" + (" all at once" if all_at_once else "")
        rows = await self.guarded(f"{what} {kind}", run_idle(args))
        if not rows:
            return "error"
        if not rows[0]["complete"]:
            self.incomplete.append(f"{what} {kind}")
        return dict(rows[0])

    async def memory_and_storms(self) -> None:
        n, size = self.sizes.idle, self.sizes.room_size
        print(f"== idle {n} users, one after another ==", flush=True)
        one = await self.idle(all_at_once=False)
        print(f"== {n} users all at once ==", flush=True)
        storm = await self.idle(all_at_once=True)
        self.raw["idle"] = [r for r in one.values() if isinstance(r, dict)]
        self.raw["storm"] = [r for r in storm.values() if isinstance(r, dict)]
        row = compare(
            "idle-kib",
            f"idle memory: RSS KiB per connection, {n:,} users each in a room of {size}",
            one,
            "kb_per_connection",
            lambda v: f"{v:.2f}",
            goal=None,
            higher=False,
        )
        kib = row.values.get("imchat")
        row.goal, row.met = "≤ 2.5 KiB", (kib <= 2.5 if kib is not None else None)
        self.add(row)
        self.add(
            compare(
                "idle-cpu",
                f"idle CPU: server ms of CPU per second while those {n:,} users sit idle",
                one,
                "idle_cpu_ms_per_s",
                lambda v: f"{v:.1f}",
                goal=None,
                higher=False,
            )
        )
        parallel = ", ".join(
            f"{TITLES[k]} {FACTORIES[k][1].parallel}" for k in self.servers if k in FACTORIES
        )
        for key, res, how in (
            ("storm-sequential", one, f"one after another ({parallel} in flight)"),
            ("storm-all", storm, "all at once"),
        ):
            self.add(
                compare(
                    key,
                    f"connect storm: {n:,} users {how}, each joining a room of {size}: seconds",
                    res,
                    "connect_s",
                    lambda v: f"{v:.1f}",
                    goal=1.0,
                    higher=False,
                )
            )

    async def redis(self) -> None:
        print("== over Redis (cluster.py's setups) ==", flush=True)
        receivers, senders, messages = self.sizes.cluster
        args = argparse.Namespace(
            receivers=receivers,
            senders=senders,
            messages=messages,
            timeout=300.0,
            redis=self.get_redis(),
            only=self.sizes.cluster_only,
            lone=0,
            pythonpath="",
            repeat=self.sizes.cluster_repeat,
        )
        with all_cores():  # as cluster.py runs them: nodes and Redis not pinned
            runs = await self.guarded("cluster", cluster.run_setups(args))
        if not runs:
            return
        self.raw["redis"] = [
            {"name": name, "round": round_, **asdict(r),
             "cpu_us_per_delivery": r.cpu_us_per_delivery, "deliveries_per_s": r.rate}
            for name, results in runs.items() for round_, r in enumerate(results)
        ]  # fmt: skip
        for row in redis_rows(runs, senders, receivers):
            self.add(row)

    async def sweep(self) -> None:
        s = self.sizes
        print(f"== sweep R={s.sweep}, then with {s.sweep_idle:,} idle users ==", flush=True)
        trials: list[list[dict[str, Any]]] = []
        ran: dict[str, str] = {}
        baseline: dict[str, Any] = {}
        for _ in range(self.args.repeat):  # the servers interleaved, as in trials()
            for kind in self.servers:
                args = self.ns(
                    servers=[kind],
                    sweep=list(s.sweep),
                    sweep_idle=s.sweep_idle,
                    sweep_deliveries=s.sweep_deliveries,
                    sweep_rate=s.sweep_rate,
                    sweep_min_messages=s.sweep_min_messages,
                    room_size=s.room_size,
                )
                # Without idle users, the sockets they will have held open to a sink.
                async with self.held_sockets(s.sweep_idle, 1, baseline):
                    without = await self.guarded(f"sweep {kind}", run_sweep(args, idle=(0,)))
                with_ = await self.guarded(
                    f"sweep {kind} idle", run_sweep(args, idle=(s.sweep_idle,))
                )
                if without is None or with_ is None:
                    ran.setdefault(kind, "error")
                    continue
                trials.append(without + with_)
        rows = median_rows(trials)
        self.incomplete += [f"sweep {r['scenario']} R={r['receivers']} {r['server']}"
                            for r in rows if not r["complete"]]  # fmt: skip
        for kind in {r["server"] for r in rows}:
            ran.pop(kind, None)  # one trial that ran is enough for its cells
        self.raw["sweep"] = rows
        self.raw["sweep_baseline"] = baseline
        fits: dict[str, tuple[float, float, float]] = {}
        for kind in self.servers:
            pts = sweep_points([r for r in rows if r["server"] == kind], "sweep")
            if len(pts) >= 2:
                fits[kind] = linear_fit(pts)
        cells = {k: ran.get(k, "—") for k in self.servers}
        cells.update({k: f"{a:.0f} + {b:.2f}·R µs (r² {r2:.3f})" for k, (a, b, r2) in fits.items()})
        slope = (
            quotient(fits["imchat"][1], fits["inspircd"][1])
            if "imchat" in fits and "inspircd" in fits
            else None
        )
        r2 = fits["imchat"][2] if "imchat" in fits else None
        self.add(
            Row(
                "sweep-linear",
                f"cost linear in recipients: server CPU per broadcast, paced "
                f"{s.sweep_rate / 1000:,.0f}k deliveries/s, R={', '.join(map(str, s.sweep))}"
                " (ratio: slope ÷ InspIRCd's)",
                cells=cells,
                ratio=slope,
                goal="r² ≥ 0.98",
                met=None if r2 is None else r2 >= 0.98,
                values={k: f[2] for k, f in fits.items()},
            )
        )
        idle_label = f"sweep+{s.sweep_idle}idle"
        for receivers in s.sweep_compare:
            pairs: dict[str, Outcome] = {}
            for kind in self.servers:
                without = pick(rows, kind, "sweep", receivers)
                with_ = pick(rows, kind, idle_label, receivers)
                if without is None:
                    pairs[kind] = ran.get(kind, "—")
                elif with_ is None:
                    pairs[kind] = self.skipped(kind, s.sweep_idle + receivers + 1) or "error"
                else:
                    pairs[kind] = {"without": without, "with": with_}
            where = (
                f"{s.sweep_idle:,} idle users in other rooms, one embedded server "
                "(without: the same connections held open to a sink)"
            )
            self.add_pair(f"sweep-idle-{receivers}", where, receivers, pairs, s.sweep_rate)

    def add_pair(
        self, key: str, where: str, receivers: int, pairs: dict[str, Outcome], rate: float
    ) -> None:
        """Rows "without → with idle users": CPU per delivery and p99, judged on imchat."""
        for metric, unit, name in (
            ("cpu_us_per_delivery", "µs", "server µs CPU per delivery"),
            ("p99_ms", "ms", "p99 latency, ms"),
        ):
            cells: dict[str, str] = {}
            ratios: dict[str, float | None] = {}
            for kind, pair in pairs.items():
                if isinstance(pair, str):
                    cells[kind] = pair
                    continue
                a, b = pair["without"][metric], pair["with"][metric]
                ratio = ratios[kind] = quotient(b, a)
                shown = "" if ratio is None else f" ({ratio:.2f})"
                cells[kind] = f"{a:.2f} → {b:.2f}{shown}"
            q = ratios.get("imchat")
            self.add(
                Row(
                    f"{key}-{'cpu' if unit == 'µs' else 'p99'}",
                    f"flat in idle users elsewhere: paced {rate / 1000:,.0f}k deliveries/s, "
                    f"R={receivers:,}, {where}: {name}, without → with"
                    " (ratio: imchat with ÷ without)",
                    cells=cells,
                    ratio=q,
                    goal=f"≤ {FLAT}",
                    met=None if q is None else q <= FLAT,
                    values=dict(ratios),
                )
            )

    async def wide(self) -> None:
        """Idle users over several Redis nodes from several client processes, each bound to
        its own loopback source address; paced broadcasts on node 0 without them (the same
        connections held open to sinks instead: :meth:`held_sockets`), with them, and without
        them again. The baseline is measured on both sides of the idle users because the
        phases are minutes long and cannot be interleaved (50,000 users take minutes to
        connect): a machine that slows down or speeds up over the run then moves the baseline
        with it instead of landing in one phase whole (``benchmarks/README.md``, round 15)."""
        s = self.sizes
        per_worker = math.ceil(s.wide_idle / s.wide_workers)
        per_node = math.ceil(s.wide_idle / s.wide_nodes) + max(s.wide_receivers) + 1
        if per_worker > FD_BUDGET or per_node > FD_BUDGET:
            raise SystemExit(f"--wide: {per_worker} sockets per process, {per_node} per node")
        print(f"== wide: {s.wide_idle:,} idle users over {s.wide_nodes} Redis nodes ==")
        errors_before = len(self.errors)
        url = self.get_redis()
        prefix = f"imchat-report-{uuid.uuid4().hex[:8]}:"
        work = Path(tempfile.mkdtemp(prefix="wide-", dir=self.base.workdir))
        nodes: list[ServerProc] = []
        children: list[asyncio.subprocess.Process] = []
        raw: dict[str, Any] = {"nodes": s.wide_nodes, "idle": s.wide_idle, "runs": []}
        self.raw["wide"] = raw
        trials: dict[str, dict[int, list[Outcome]]] = {
            phase: {r: [] for r in s.wide_receivers} for phase in ("without", "with")
        }
        try:
            for i in range(s.wide_nodes):
                node = imchat_server(
                    work / f"node{i}",
                    work / f"node{i}.log",
                    self.base.server_cpu,
                    ["--redis", url, "--redis-prefix", prefix],
                )
                await node.start(60.0)
                nodes.append(node)

            async def measure(phase: str, label: str) -> None:
                """Each room size ``--repeat`` times, interleaved, into ``trials[phase]``."""
                for _ in range(self.args.repeat):
                    for receivers in s.wide_receivers:
                        got = await self.guarded(
                            f"wide {label} R={receivers}", self.wide_broadcast(nodes, receivers)
                        )
                        if got is not None:
                            got["phase"] = label
                            raw["runs"].append(got)
                            trials[phase][receivers].append(got)

            async def baseline(label: str) -> None:
                record = raw.setdefault(label, {})
                async with self.held_sockets(s.wide_idle, s.wide_workers, record):
                    await quiet(nodes, 15.0)
                    await measure("without", label)

            await baseline("without, before")
            rss0 = sum(n.rss_kb() for n in nodes)
            t0 = time.monotonic()
            ports = ",".join(str(n.port) for n in nodes)
            workers, hellos = await self.crowd(children, ports, f"w{uuid.uuid4().hex[:4]}")
            users = sum(h["users"] for h in hellos)
            connect_s = time.monotonic() - t0
            await quiet(nodes, 30.0)
            settle_s = time.monotonic() - t0 - connect_s
            rss1 = sum(n.rss_kb() for n in nodes)
            raw.update(
                users=users,
                connect_s=connect_s,
                settle_s=settle_s,
                rss_before_kb=rss0,
                rss_after_kb=rss1,
                kb_per_connection=(rss1 - rss0) / max(1, users),
                crowd=hellos,
            )
            print(
                f"  {users:,} idle users connected in {connect_s:.1f} s (settled "
                f"{settle_s:.1f} s later), {(rss1 - rss0) / max(1, users):.2f} KiB each",
                flush=True,
            )
            await measure("with", "with")
            lost = sum([(await last_line(p))["lost"] for p in workers])
            raw["crowd_lost"] = lost
            if lost or users != s.wide_idle:
                self.incomplete.append(f"wide: {users} of {s.wide_idle} idle users, {lost} lost")
            await quiet(nodes, 30.0)  # the crowd's departure
            await baseline("without, after")
        finally:
            await reap(children)
            for node in nodes:
                node.stop()
            failed = len(self.errors) > errors_before or sys.exc_info()[0] is not None
            if failed:
                kept = Path(tempfile.mkdtemp(prefix="imchat-report-wide-logs-"))
                for node in nodes:
                    shutil.copy(node.log_path, kept / node.log_path.name)
                print(f"  the nodes' logs are kept in {kept}", flush=True)
            with contextlib.suppress(Exception):
                delete_prefix(url, prefix)
            shutil.rmtree(work, ignore_errors=True)
        na = {"inspircd": "— (one process: ≤ 20,000 fds)", "miniircd": "—"}
        setup = raw.get("users")
        self.add(
            Row(
                "wide-setup",
                f"{s.wide_idle:,} idle users over {s.wide_nodes} Redis nodes, from "
                f"{s.wide_workers} processes bound to 127.0.0.2 to .{1 + s.wide_workers}, rooms "
                f"of {s.room_size}: connect s, nodes' RSS KiB per connection",
                cells={
                    "imchat": f"{raw['connect_s']:.1f} s, {raw['kb_per_connection']:.2f} KiB"
                    if setup
                    else "error",
                    **na,
                },
                ratio=None,
                goal="reported",
                met=None,
            )
        )
        for receivers in s.wide_receivers:
            a, b = (merge_trials(trials[phase][receivers]) for phase in ("without", "with"))
            pair: Outcome = {"without": a, "with": b} if a and b else "error"
            where = (
                f"{s.wide_idle:,} idle users over {s.wide_nodes} Redis nodes, room on node 0 "
                "(without: the same connections held open to sinks, before and after them)"
            )
            pairs = {"imchat": pair, **na}
            self.add_pair(f"wide-{receivers}", where, receivers, pairs, s.sweep_rate)
            if a and b:
                self.add(
                    Row(
                        f"wide-{receivers}-allnodes",
                        f"the same, R={receivers:,}: every node's µs CPU per delivery, "
                        "without → with (ratio: with ÷ without)",
                        cells={
                            "imchat": f"{a['all_nodes_us_per_delivery']:.2f} → "
                            f"{b['all_nodes_us_per_delivery']:.2f}",
                            **na,
                        },
                        ratio=quotient(
                            b["all_nodes_us_per_delivery"], a["all_nodes_us_per_delivery"]
                        ),
                        goal="reported",
                        met=None,
                    )
                )

    @contextlib.asynccontextmanager
    async def held_sockets(
        self, count: int, processes: int, record: dict[str, Any]
    ) -> AsyncIterator[None]:
        """``count`` plain connections held open meanwhile, from ``processes`` pairs of a
        ``crowd.py --plain`` (each from its own loopback address) and a ``sink.py``: the
        baseline of a "flat in idle users" pair has the sockets its idle users will have.
        This machine walks every socket every 1-3 s (~100 ms of CPU a pass at 100,000
        sockets, on either core), so a baseline without them would measure the machine's
        sockets as well as the users (``benchmarks/README.md``, round 13)."""
        children: list[asyncio.subprocess.Process] = []
        share = math.ceil(count / processes)
        pairs = []
        try:
            for i in range(processes):
                sink = await spawn(children, HERE / "sink.py", [], self.base.server_cpu)
                port = (await first_line(sink, "a sink"))["port"]
                users = min(share, count - i * share)
                argv = ["--plain", "--ports", str(port), "--source", f"127.0.0.{2 + i}"]
                argv += ["--users", str(users), "--parallel", str(PLAIN_PARALLEL)]
                crowd = await spawn(children, HERE / "crowd.py", argv, self.base.loadgen_cpu)
                pairs.append((sink, crowd))
            held = sum([(await first_line(c, "a crowd process"))["users"] for _, c in pairs])
            yield
            lost = sum([(await last_line(c))["lost"] for _, c in pairs])
            accepted = sum([(await last_line(sink))["accepted"] for sink, _ in pairs])
            record.update(baseline_connections=held, baseline_accepted=accepted)
            if lost or held != count or accepted != held:
                self.incomplete.append(f"baseline: {held} of {count} sockets held, {lost} lost")
        finally:
            await reap(children)

    async def crowd(
        self, children: list[asyncio.subprocess.Process], ports: str, nick_prefix: str
    ) -> tuple[list[asyncio.subprocess.Process], list[dict[str, Any]]]:
        """``--wide``'s idle connections: ``crowd.py`` processes, each from its own loopback
        address, connected; returns them and what each said once connected."""
        s = self.sizes
        per_worker = math.ceil(s.wide_idle / s.wide_workers)
        workers = []
        for w in range(s.wide_workers):
            first = w * per_worker
            argv = [
                *("--ports", ports, "--source", f"127.0.0.{2 + w}"),
                *("--first", str(first), "--users", str(min(per_worker, s.wide_idle - first))),
                *("--room-size", str(s.room_size), "--nick-prefix", nick_prefix),
                *("--parallel", str(WIDE_PARALLEL)),
            ]
            workers.append(await spawn(children, HERE / "crowd.py", argv, self.base.loadgen_cpu))
        return workers, [await first_line(proc, "a crowd process") for proc in workers]

    async def wide_broadcast(self, nodes: list[ServerProc], receivers: int) -> dict[str, Any]:
        """One paced broadcast among fresh users of a fresh room on node 0."""
        s = self.sizes
        await quiet(nodes, 15.0)  # the last measurement's users are gone (their disconnects)
        driver = TaggedDriver("imchat", nodes[0], uuid.uuid4().hex[:4])
        others: list[float] = []

        def before() -> None:
            others.append(sum(n.cpu_seconds() for n in nodes[1:]))

        def after() -> None:
            others.append(sum(n.cpu_seconds() for n in nodes[1:]))

        result = await broadcast(
            driver,
            receivers=receivers,
            messages=max(s.sweep_min_messages, s.wide_deliveries // receivers),
            rate=s.sweep_rate,
            probes=self.base.probes,
            around=(before, after),
        )
        row = {**asdict(result), "cpu_us_per_delivery": result.cpu_us_per_delivery}
        other_nodes = others[1] - others[0]
        row["other_nodes_cpu_s"] = other_nodes
        row["all_nodes_us_per_delivery"] = (
            (result.server_cpu_s + other_nodes) / result.delivered * 1e6
            if result.delivered
            else math.nan
        )
        print("  " + fanout.format_row({"scenario": "wide", **row}), flush=True)
        if not result.complete:
            self.incomplete.append(f"wide R={receivers}")
        return row


async def spawn(
    children: list[asyncio.subprocess.Process], script: Path, argv: list[str], cpu: int | None
) -> asyncio.subprocess.Process:
    """One of this directory's scripts as a child on ``cpu``, noted in ``children`` (killed
    at the end if still running); it talks in JSON lines on stdout, and stops when its
    stdin closes."""
    proc = await asyncio.create_subprocess_exec(
        *pinned([sys.executable, str(script), *argv], cpu),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    children.append(proc)
    return proc


async def reap(children: list[asyncio.subprocess.Process]) -> None:
    """Kill the children still running (a run that failed half-way)."""
    for proc in children:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def first_line(proc: asyncio.subprocess.Process, what: str) -> dict[str, Any]:
    """A child's first line: it is ready (a crowd has connected its users)."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 900)
    if not line:
        raise RuntimeError(f"{what} exited before it was ready")
    return cast(dict[str, Any], json.loads(line))


async def last_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """Close a child's stdin, and its last line once it has let go of its connections."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    await asyncio.wait_for(proc.wait(), 60)
    if not line:
        raise RuntimeError(f"child {proc.pid} exited with {proc.returncode} before its last line")
    return cast(dict[str, Any], json.loads(line))


#: Plain connections in flight per ``crowd.py --plain`` (no handshake: only the sink accepts).
PLAIN_PARALLEL = 64

#: Handshakes in flight per Redis node and client process in ``--wide``. A node runs each
#: hello, join and disconnect as Redis commands on a connection of its own from redis-py's
#: pool, which holds at most 100 (redis-py 8's default): past that the request fails with
#: ``internal`` (``MaxConnectionsError``), so the crowd connects 16 at a time per node and
#: process, and each measurement waits until the last one's disconnects are done.
WIDE_PARALLEL = 16


class TaggedDriver(ImchatDriver):
    """Nicks and the room carry a tag: nodes that stay up get fresh users and a fresh room
    for each measurement (a guest's nick stays reserved after it leaves)."""

    parallel = WIDE_PARALLEL

    def __init__(self, name: str, server: ServerProc, tag: str) -> None:
        super().__init__(name, server)
        self.tag = tag

    def nick(self, role: str, i: int) -> str:
        return f"{role}{self.tag}{i}"

    def room(self, name: str) -> str:
        return f"{name}{self.tag}"


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """This process on every core for a while, so processes started meanwhile are not pinned
    to the generator's core (they inherit the affinity)."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def quotient(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None where a figure is missing or the divisor is too small to
    measure: a quick run's CPU seconds can read 0.00 at the clock's 10 ms tick."""
    if num is None or den is None or not math.isfinite(num) or not math.isfinite(den):
        return None
    return num / den if den > 0 else None


def pick(rows: list[dict[str, Any]], kind: str, label: str, receivers: int) -> Any:
    return next(
        (
            r
            for r in rows
            if r["server"] == kind and r["scenario"] == label and r["receivers"] == receivers
        ),
        None,
    )


def value(outcome: Outcome | None, metric: str) -> float | None:
    if isinstance(outcome, dict) and metric in outcome:
        v = outcome[metric]
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None
    return None


def median_outcome(outcomes: list[Outcome]) -> Outcome:
    """One outcome of several trials: each figure the median of the trials that have it, the
    trials themselves under ``trials`` and each figure's (least, greatest) under ``spread``;
    incomplete if any trial was. No trial with figures: the first trial's reason."""
    rows = [o for o in outcomes if isinstance(o, dict)]
    if not rows:
        return outcomes[0]
    merged: dict[str, Any] = dict(rows[len(rows) // 2])
    spread: dict[str, tuple[float, float]] = {}
    for key in merged:
        figures = [
            float(r[key])
            for r in rows
            if isinstance(r.get(key), int | float)
            and not isinstance(r.get(key), bool)
            and math.isfinite(r[key])
        ]
        if figures and isinstance(merged[key], int | float) and not isinstance(merged[key], bool):
            merged[key] = statistics.median(figures)
            spread[key] = (min(figures), max(figures))
    merged["complete"] = all(r.get("complete", True) for r in rows)
    merged["trials"] = rows
    merged["spread"] = spread
    if len(rows) < len(outcomes):
        merged["failed_trials"] = len(outcomes) - len(rows)
    return merged


def merge_trials(outcomes: list[Outcome]) -> dict[str, Any] | None:
    """:func:`median_outcome` of the trials, or None if none of them has figures."""
    merged = median_outcome(outcomes) if outcomes else None
    return merged if isinstance(merged, dict) else None


def median_rows(trials: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several trials of one scenario (each a list of rows, one per server,
    label and R), one row per (server, label, R): :func:`median_outcome` of its trials."""
    grouped: dict[tuple[str, str, int], list[Outcome]] = {}
    for trial in trials:
        for row in trial:
            grouped.setdefault((row["server"], row["scenario"], row["receivers"]), []).append(row)
    merged = [median_outcome(outcomes) for outcomes in grouped.values()]
    return [row for row in merged if isinstance(row, dict)]


def redis_rows(runs: dict[str, list[cluster.Result]], senders: int, receivers: int) -> list[Row]:
    """A row per Redis setup, judged by the median of its rounds' ratios: each round ran the
    embedded node and the setup back to back, so each ratio pairs runs that met the same
    machine, where two separate least-of figures may come from different minutes."""
    embedded = runs[cluster.EMBEDDED]
    reference = median_range([r.cpu_us_per_delivery for r in embedded])
    rows = []
    for name, results in runs.items():
        if name == cluster.EMBEDDED:
            continue
        # A quick run's CPU can read 0.00 s (the clock's tick): such a round has no ratio.
        pairs = [q for q in cluster.paired_ratios(results, embedded) if math.isfinite(q)]
        q = statistics.median(pairs) if pairs else None
        setup = name.removeprefix("redis, ")
        figures = [r.cpu_us_per_delivery for r in results]
        rows.append(
            Row(
                "redis-" + setup.replace(", ", "-").replace(" ", "-"),
                f"over Redis, {setup} ({senders} senders, {receivers} receivers in one room):"
                f" node µs CPU per delivery (ratio: the median of {len(pairs)} rounds' ÷"
                " embedded, each round's two runs back to back)",
                cells={
                    "imchat": f"{median_range(figures)} (embedded {reference}{ratio_range(pairs)})",
                    "inspircd": "— (no cluster)",
                    "miniircd": "— (no cluster)",
                },
                ratio=q,
                goal=f"≤ 1.5 {TIMES} embedded",
                met=None if q is None else q <= 1.5,
                values={"imchat": statistics.median(figures)},
            )
        )
    return rows


def ratio_range(pairs: list[float]) -> str:
    return f"; ratios {min(pairs):.2f}\N{EN DASH}{max(pairs):.2f}" if len(pairs) > 1 else ""


def median_range(figures: list[float]) -> str:
    """The median of figures, and " [least to greatest]" if more than one."""
    mid = f"{statistics.median(figures):.2f}"
    if len(figures) < 2:
        return mid
    return f"{mid} [{min(figures):.2f}\N{EN DASH}{max(figures):.2f}]"


def spread_text(outcome: dict[str, Any], metric: str, fmt: Callable[[float], str]) -> str:
    """The range " [least to greatest]" of a figure measured more than once, else ""."""
    trials = outcome.get("trials", ())
    low_high = outcome.get("spread", {}).get(metric)
    if len(trials) < 2 or low_high is None:
        return ""
    failed = outcome.get("failed_trials", 0)
    note = f", {failed} failed" if failed else ""
    return f" [{fmt(low_high[0])}\N{EN DASH}{fmt(low_high[1])}{note}]"


def ok_cell(r: dict[str, Any]) -> str:
    return f"{r['ok_p50_ms']:.1f} / {r['ok_p99_ms']:.1f} ms"


def cell(outcome: Outcome | None, metric: str, fmt: Callable[[dict[str, Any]], str]) -> str:
    if outcome is None:
        return "—"
    if isinstance(outcome, str):
        return outcome
    if value(outcome, metric) is None:
        return "—"
    text = fmt(outcome)
    if outcome.get("complete") is False:
        text += " (incomplete)"
    return text


def compare(
    key: str,
    label: str,
    res: dict[str, Outcome],
    metric: str,
    fmt: Callable[[float], str],
    *,
    goal: float | None,
    higher: bool,
    extra: Callable[[dict[str, Any]], str] | None = None,
) -> Row:
    """A row of one figure per server; ratio imchat ÷ InspIRCd judged against ``goal``
    (≥ goal if ``higher``, else ≤ goal; None: reported only)."""
    values = {k: value(r, metric) for k, r in res.items()}

    def shown(o: dict[str, Any]) -> str:
        return fmt(o[metric]) + spread_text(o, metric, fmt) + (extra(o) if extra else "")

    cells = {k: cell(r, metric, shown) for k, r in res.items()}
    mine, theirs = values.get("imchat"), values.get("inspircd")
    ratio = quotient(mine, theirs)
    if goal is None:
        return Row(key, label, cells, ratio, "reported", None, values)
    met = None if ratio is None else (ratio >= goal if higher else ratio <= goal)
    text = f"{'≥' if higher else '≤'} {goal:g} {TIMES} InspIRCd"
    return Row(key, label, cells, ratio, text, met, values)


# ---- the machine and the run -------------------------------------------------------------


def machine() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def command(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "not installed"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    inspircd = shutil.which("inspircd") or "/usr/sbin/inspircd"
    rev = command(["git", "-C", str(HERE), "describe", "--always", "--dirty"])
    import resource

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "msgspec": version("msgspec"),
        "inspircd": command([inspircd, "--version"]) if Path(inspircd).exists() else "absent",
        "miniircd": version("miniircd"),
        "redis": command(["redis-server", "--version"]).split(" sha=")[0],
        "imchat": rev,
        "fds": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }


def own_cpu() -> float:
    """CPU seconds of this process and of every child it has waited for (servers, crowd)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def render(report: Report, info: dict[str, str], noise: dict[str, float]) -> str:
    args, servers = report.args, report.servers
    pin = (
        f"servers on core {report.base.server_cpu}, generator on core {report.base.loadgen_cpu}"
        if report.base.server_cpu is not None
        else "not pinned"
    )
    lines = [
        f"imchat `{info['imchat']}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (" — **quick: sizes shrunk, figures meaningless**" if args.quick else ""),
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({pin}), {info['memory']}, kernel "
        f"{info['kernel']}, Python {info['python']}, uvloop {info['uvloop']}, msgspec "
        f"{info['msgspec']}, {info['inspircd']}, miniircd {info['miniircd']}, "
        f"{info['redis']}; open files {info['fds']} per process.",
        f"Noise (`other`): the rest of the machine used {noise['other_cpu_s']:.0f} CPU-s in "
        f"the run's {noise['wall_s']:.0f} s ({noise['other_cores']:.2f} cores on average); "
        f"in the broadcast measurements {noise['broadcast_other_cpu_s']:.0f} CPU-s over "
        f"{noise['broadcast_s']:.0f} s, at most {noise['broadcast_other_max']:.1f} CPU-s in "
        "one.",
        *(
            [
                f"Each flat, R=1, paced, idle, storm and sweep figure is the median of "
                f"{args.repeat} trials, the servers interleaved, with the least and greatest "
                "in brackets (the sweep's: in the JSON)."
            ]
            if args.repeat > 1
            else []
        ),
        "",
        "| target | "
        + " | ".join(TITLES[s] for s in servers)
        + " | ratio (imchat ÷ InspIRCd unless said) | goal | met |",
        "| --- | " + " | ".join("---" for _ in servers) + " | --- | --- | --- |",
    ]
    lines += [row.markdown(servers) for row in report.rows]
    if report.errors or report.incomplete:
        lines += ["", "Failed: " + "; ".join(report.errors + report.incomplete)]
    return "\n".join(lines)


def noise_of(report: Report, wall: float, busy: float, own: float) -> dict[str, float]:
    runs = [
        trial
        for key in ("flat", "r1", "paced", "sweep")
        for r in report.raw.get(key, [])
        for trial in r.get("trials", [r])  # each trial of --repeat, not their medians
        if "other_cpu_s" in trial
    ] + list(report.raw.get("wide", {}).get("runs", []))
    return {
        "wall_s": wall,
        "other_cpu_s": max(0.0, busy - own),
        "other_cores": max(0.0, busy - own) / wall if wall else 0.0,
        "broadcast_other_cpu_s": sum(r["other_cpu_s"] for r in runs),
        "broadcast_s": sum(r["seconds"] for r in runs),
        "broadcast_other_max": max((r["other_cpu_s"] for r in runs), default=0.0),
    }


STEPS = ("flat", "r1", "paced", "idle", "redis", "sweep", "wide")


async def run(report: Report) -> None:
    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "flat": report.flat,
        "r1": report.r1,
        "paced": report.paced,
        "idle": report.memory_and_storms,
        "redis": report.redis,
        "sweep": report.sweep,
        "wide": report.wide,
    }
    for name in report.args.steps:
        t0 = time.monotonic()
        await steps[name]()
        report.raw.setdefault("step_seconds", {})[name] = time.monotonic() - t0
        print(f"== {name}: {time.monotonic() - t0:.0f} s ==", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every size shrunk: a smoke test")
    p.add_argument(
        "--wide",
        action="store_true",
        help="also the 50,000 idle users over 3 Redis nodes (a few minutes more)",
    )
    p.add_argument(
        "--only",
        default="",
        help=f"comma list of steps to run ({', '.join(STEPS)}); default all but wide "
        "(with --wide: all)",
    )
    p.add_argument(
        "--wide-idle", type=int, default=None, help="idle users of --wide (default 50,000)"
    )
    p.add_argument("--skip", default="", help="comma list of steps not to run")
    p.add_argument(
        "--servers", default="all", help="comma list of imchat, inspircd, miniircd (default all)"
    )
    p.add_argument(
        "--redis",
        default="",
        help="an existing Redis for the cluster steps (a key prefix of their own, deleted "
        "afterwards); default: a redis-server of the run's own on a free port",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="trials of each flat, R=1, paced, idle and storm measurement, the servers "
        "interleaved: the median, with the least and greatest in brackets (default 1)",
    )
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--table", type=Path, help="also write the markdown table to this file")
    p.add_argument("--profile", type=Path, help="py-spy the imchat server at R=1 into DIR")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers/generator to CPUs")
    p.add_argument("--workdir", type=Path, default=None, help="temp dir for server data")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.servers = list(SERVERS) if args.servers == "all" else args.servers.split(",")
    for name in args.servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}")
    if "imchat" not in args.servers:
        p.error("imchat must be among --servers")
    chosen = args.only.split(",") if args.only else [s for s in STEPS if s != "wide" or args.wide]
    skip = set(args.skip.split(",")) if args.skip else set()
    for name in [*chosen, *skip]:
        if name not in STEPS:
            p.error(f"unknown step {name!r}")
    args.steps = [s for s in STEPS if s in chosen and s not in skip]
    base = fanout.parse_args(["--no-pin"] if args.no_pin else [])
    args.server_cpu, args.loadgen_cpu = base.server_cpu, base.loadgen_cpu
    return args


def available(servers: list[str]) -> list[str]:
    """The servers that can run here (a missing peer is dropped, with a note)."""
    out = []
    for kind in servers:
        if kind == "inspircd" and not (
            shutil.which("inspircd") or Path("/usr/sbin/inspircd").exists()
        ):
            print("inspircd not installed: left out", flush=True)
        elif kind == "miniircd" and importlib.util.find_spec("miniircd") is None:
            print("miniircd not installed: left out", flush=True)
        else:
            out.append(kind)
    return out


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="imchat-report-", dir=args.workdir) as work:
        args.workdir = Path(work)
        report = Report(args)
        report.servers = available(args.servers)
        info = machine()
        t0, busy0, own0 = time.monotonic(), machine_busy_seconds(), own_cpu()
        try:
            await run(report)
        finally:
            report.close()
        wall = time.monotonic() - t0
        noise = noise_of(report, wall, machine_busy_seconds() - busy0, own_cpu() - own0)
    table = render(report, info, noise)
    print("\n== report ==\n" + table, flush=True)
    if args.table:
        args.table.write_text(table + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "noise": noise,
                    "quick": args.quick,
                    "rows": [asdict(r) for r in report.rows],
                    "raw": report.raw,
                    "errors": report.errors,
                    "incomplete": report.incomplete,
                },
                indent=1,
                default=str,
            )
        )
    return 1 if report.errors or report.incomplete or not report.rows else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    fanout.raise_fd_limit()
    if args.loadgen_cpu is not None:
        os.sched_setaffinity(0, {args.loadgen_cpu})
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(amain(args), args.timeout))


if __name__ == "__main__":
    sys.exit(main())
