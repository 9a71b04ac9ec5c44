"""HTTP API throughput and latency against the native protocol, on one real server process.

One client posts room messages one at a time over a single keep-alive HTTP connection
(``POST /api/v1/rooms/bench/messages``, JSON, Bearer token) and records each request's
latency; then one native client does the same with ``say`` requests, each awaiting its
``ok``. A native member of the room receives every message in both phases, so both cost the
same fan-out. Reported: messages/s, p50/p99 latency, and the server's CPU time per message
(from /proc), which is the cost of the HTTP face against the native protocol.

    .venv/bin/python benchmarks/http.py -n 5000 [--concurrency 1] [--redis URL] [--json FILE]
"""

# ruff: noqa: E402  (sys.path is fixed up before the imports; see below)
from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: run as a script, its directory would come first on sys.path and
# shadow the standard library's http package. Look there last instead (for serverproc).
_HERE = str(Path(__file__).resolve().parent)
while _HERE in sys.path or "" in sys.path[:1]:
    sys.path.remove(_HERE if _HERE in sys.path else "")
sys.path.append(_HERE)

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

import aiohttp
from loadgen import percentile
from serverproc import HOST, ServerProc, free_port, imchat_server, machine_busy_seconds

from imchat.client import Connection

ROOM = "bench"


async def drain(receiver: Connection, expected: int) -> None:
    """Read ``expected`` msg events on the receiving member (every message is delivered)."""
    seen = 0
    while seen < expected:
        event = await receiver.next_event(30.0)
        seen += event.get("type") == "msg"


async def run_http(
    server: ServerProc, http_port: int, token: str, n: int, concurrency: int
) -> dict[str, Any]:
    url = f"http://{HOST}:{http_port}/api/v1/rooms/{ROOM}/messages"
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)  # keep-alive, reused connections
    async with aiohttp.ClientSession(connector=connector, headers=headers) as client:
        async with client.post(url, json={"text": "warm-up"}) as response:
            assert response.status == 200, await response.text()
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                async with client.post(url, json={"text": f"http message {i}"}) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {body!r}")
                latencies.append(time.perf_counter() - started)

        cpu0, busy0, t0 = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = server.cpu_seconds() - cpu0
        busy = machine_busy_seconds() - busy0
    return summary("http", n, elapsed, latencies, cpu, busy)


async def run_native(server: ServerProc, token: str, n: int) -> dict[str, Any]:
    conn = await Connection.connect(HOST, server.port or 0)
    await conn.hello("admin", token=token)
    await conn.request("join", room=ROOM)
    latencies: list[float] = []
    cpu0, busy0, t0 = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    for i in range(n):
        started = time.perf_counter()
        await conn.request("say", room=ROOM, text=f"native message {i}")
        latencies.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    busy = machine_busy_seconds() - busy0
    conn.abort()
    return summary("native", n, elapsed, latencies, cpu, busy)


def summary(
    name: str, n: int, elapsed: float, latencies: list[float], cpu: float, busy: float
) -> dict[str, Any]:
    return {
        "protocol": name,
        "messages": n,
        "msgs_per_s": round(n / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(sorted(latencies), 99) * 1000, 3),
        "server_cpu_us_per_msg": round(cpu / n * 1e6, 1),
        "machine_busy_s": round(busy, 2),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imchat-http-bench-"))
    data_dir = workdir / "data"
    http_port = free_port()
    server = imchat_server(data_dir, workdir / "server.log", None)
    server.argv += ["--http-port", str(http_port)]
    if args.redis:
        server.argv += ["--redis", args.redis, "--redis-prefix", f"imchat-bench-{http_port}:"]
    await server.start()
    rows: list[dict[str, Any]] = []
    try:
        token = (data_dir / "admin.token").read_text().strip()
        receiver = await Connection.connect(HOST, server.port or 0)
        await receiver.hello("receiver")
        await receiver.request("join", room=ROOM)
        reading = asyncio.create_task(drain(receiver, 2 * args.n + 1))
        rows.append(await run_http(server, http_port, token, args.n, args.concurrency))
        rows.append(await run_native(server, token, args.n))
        await asyncio.wait_for(reading, 60)
        receiver.abort()
    finally:
        server.stop()
    return rows


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="messages per protocol")
    parser.add_argument("--concurrency", type=int, default=1, help="HTTP requests in flight")
    parser.add_argument("--redis", help="run the server on this Redis (redis://...)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--workdir", help="data directory and server log (default: a temp dir)")
    args = parser.parse_args()
    rows = asyncio.run(main(args))
    header = f"{'protocol':<8} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU/msg':>15}"
    print(header)
    for row in rows:
        print(
            f"{row['protocol']:<8} {row['msgs_per_s']:>8} {row['p50_ms']:>8.3f}"
            f" {row['p99_ms']:>8.3f} {row['server_cpu_us_per_msg']:>12.1f} µs"
        )
    http, native = rows
    ratio = http["server_cpu_us_per_msg"] / max(native["server_cpu_us_per_msg"], 0.1)
    print(f"HTTP costs the server {ratio:.1f}x the CPU of a native message")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    cli()
