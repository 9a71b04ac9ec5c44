"""Revision 3 benchmarks: search on a big SQLite store, and ``say`` with edits and reactions.

``search``: writes a database of ``--messages`` room messages over ``--rooms`` rooms straight
into the ``messages`` table (what a database from before revision 3 looks like: no index),
opens it with :class:`SQLiteStore`, which builds the FTS5 index once (that time is the
migration cost), then runs ``--queries`` searches through the store as a user who is a member
of ``--member-of`` rooms (plus DMs and announcements), mixing common, mid and rare terms,
one or two per query, half of them paged back with ``before``. Reports p50/p95/p99/max.

``say``: a server subprocess (``imchat server``, rate limit off) and ``--senders`` clients in
one room, each sending ``--per-sender`` requests one after another (each waits for its ``ok``,
so latency is the round trip and throughput is what the server sustains). Run twice: plain
``say`` only, then with ``--mix`` (default 10 %) of the requests being edits of, or reactions
to, the sender's own earlier messages. Reports requests/s and p50/p99 latency of each.

    python benchmarks/features.py search --messages 1000000 --rooms 1000
    python benchmarks/features.py say --senders 20 --per-sender 2000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import percentile
from serverproc import imchat_server

from imchat.client import Connection
from imchat.server.message_features import SearchScope
from imchat.server.sqlite_store import SCHEMA, SQLiteStore
from imchat.server.streams import StreamId

WORDS = 20000


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(WORDS)}
    return sorted(words)


# -- search ------------------------------------------------------------------------------------


def write_database(path: Path, messages: int, rooms: int, rng: random.Random) -> list[str]:
    """An imchat database holding only messages (no search index yet), Zipf-like words."""
    words = vocabulary(rng)
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    encoder = msgspec.json.Encoder()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    names = [f"room{i}" for i in range(rooms)]
    conn.executemany(
        "INSERT INTO rooms (name, created) VALUES (?, ?)", [(n, time.time()) for n in names]
    )
    seqs = dict.fromkeys(names, 0)
    ts = time.time() - messages / 100  # 100 messages a second, ending now
    batch = []
    for i in range(messages):
        room = names[rng.randrange(rooms)]
        seqs[room] += 1
        ts += 0.01
        text = " ".join(rng.choices(words, cum_weights=cum_weights, k=rng.randint(3, 15)))
        sender = f"user{rng.randrange(5000)}"
        event = {
            "type": "msg",
            "room": room,
            "from": sender,
            "text": text,
            "seq": seqs[room],
            "ts": round(ts, 3),
        }
        batch.append((f"r:{room}", seqs[room], round(ts, 3), sender, encoder.encode(event)))
        if len(batch) >= 50000:
            conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, NULL, ?)", batch)
            batch.clear()
            print(f"  {i + 1} messages written", file=sys.stderr, end="\r")
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, NULL, ?)", batch)
    conn.execute("COMMIT")
    conn.close()
    print(file=sys.stderr)
    return words


async def bench_search(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="imchat-search-", dir=args.workdir))
    path = workdir / "imchat.db"
    start = time.perf_counter()
    words = write_database(path, args.messages, args.rooms, rng)
    written = time.perf_counter() - start
    store = SQLiteStore(path)
    start = time.perf_counter()
    await store.open()
    opened = time.perf_counter() - start
    assert store.index_build_seconds is not None
    member = [StreamId.room(f"room{i}") for i in rng.sample(range(args.rooms), args.member_of)]
    scope = SearchScope((*member, StreamId.announcements()), dm_user="user1")
    tiers = {"common": words[:50], "mid": words[50:2000], "rare": words[2000:]}
    timings: dict[str, list[float]] = {tier: [] for tier in tiers}
    found = 0
    all_ms: list[float] = []
    newest = time.time()
    for i in range(args.queries):
        tier = list(tiers)[i % 3]
        terms = rng.sample(tiers[tier], rng.choice((1, 2)))
        named = i % 4 == 0
        query_scope = SearchScope((rng.choice(member),)) if named else scope
        before = newest - rng.random() * args.messages / 100 if i % 2 else None
        t0 = time.perf_counter()
        result = await store.search(query_scope, " ".join(terms), before=before, limit=50)
        ms = (time.perf_counter() - t0) * 1000
        found += len(result.messages)
        timings[tier].append(ms)
        all_ms.append(ms)
    await store.close()
    size_mb = path.stat().st_size / 1e6
    ordered = sorted(all_ms)
    return {
        "benchmark": "search",
        "messages": args.messages,
        "rooms": args.rooms,
        "member_of": args.member_of,
        "queries": args.queries,
        "write_s": round(written, 1),
        "index_build_s": round(store.index_build_seconds, 1),
        "open_s": round(opened, 1),
        "db_mb": round(size_mb),
        "hits_per_query": round(found / args.queries, 1),
        "p50_ms": round(statistics.median(all_ms), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
        **{f"p95_{tier}_ms": round(percentile(sorted(v), 95), 2) for tier, v in timings.items()},
    }


# -- say with edits and reactions --------------------------------------------------------------


async def _sender(
    port: int, nick: str, count: int, mix: float, rng: random.Random, latencies: list[float]
) -> None:
    conn = await Connection.connect("127.0.0.1", port)
    await conn.hello(nick)
    await conn.request("join", room="bench")
    mine: list[int] = []
    for i in range(count):
        t0 = time.perf_counter()
        if mine and rng.random() < mix:
            target = rng.choice(mine[-50:])
            if rng.random() < 0.5:
                await conn.request("edit", room="bench", seq=target, text=f"edited {i}")
            else:
                emoji = rng.choice(("👍", "🎉", "👀", "x"))
                await conn.request("react", room="bench", seq=target, emoji=emoji)
        else:
            ok = await conn.request("say", room="bench", text=f"message {i} from {nick}")
            mine.append(ok["seq"])
        latencies.append((time.perf_counter() - t0) * 1000)
    await conn.close()


async def _drain(conn: Connection) -> None:
    while True:
        await conn.next_event()


async def bench_say_once(args: argparse.Namespace, mix: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="imchat-say-", dir=args.workdir))
    server = imchat_server(workdir / "data", workdir / "server.log", None if args.no_pin else 0)
    port = await server.start()
    try:
        listener = await Connection.connect("127.0.0.1", port)
        await listener.hello("listener")
        await listener.request("join", room="bench")
        drain = asyncio.create_task(_drain(listener))
        latencies: list[float] = []
        rng = random.Random(args.seed)
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(
            *(
                _sender(port, f"s{i}", args.per_sender, mix, random.Random(rng.random()), latencies)
                for i in range(args.senders)
            )
        )
        wall = time.perf_counter() - t0
        cpu = server.cpu_seconds() - cpu0
        drain.cancel()
        await listener.close()
    finally:
        server.stop()
    total = args.senders * args.per_sender
    return {
        "benchmark": "say",
        "mix": mix,
        "requests": total,
        "requests_per_s": round(total / wall),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(sorted(latencies), 99), 2),
        "server_cpu_us_per_request": round(cpu / total * 1e6, 1),
    }


async def bench_say(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for _ in range(args.rounds):
        rows.append(await bench_say_once(args, 0.0))
        rows.append(await bench_say_once(args, args.mix))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search")
    search.add_argument("--messages", type=int, default=1_000_000)
    search.add_argument("--rooms", type=int, default=1000)
    search.add_argument("--member-of", type=int, default=20)
    search.add_argument("--queries", type=int, default=600)
    say = sub.add_parser("say")
    say.add_argument("--senders", type=int, default=20)
    say.add_argument("--per-sender", type=int, default=1000)
    say.add_argument("--mix", type=float, default=0.10)
    say.add_argument("--rounds", type=int, default=2)
    say.add_argument("--no-pin", action="store_true")
    for p in (search, say):
        p.add_argument("--seed", type=int, default=12)
        p.add_argument("--workdir", type=Path, default=None)
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result: Any = asyncio.run(bench_search(args) if args.command == "search" else bench_say(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
