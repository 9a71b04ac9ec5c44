"""Output memory bound: guests asking for the largest replies and never reading them.

    python benchmarks/output_memory.py [--guests 60] [--requests 4] [--max-output-total BYTES]

A writer fills a room with the longest messages (``max_text`` characters of 4 bytes each);
then ``--guests`` guest sessions (small receive buffers, never reading) each ask ``--requests``
times for the largest ``history`` reply (500 messages) and for the room list. Reported: the
server's RSS before the guests, its peak (``VmHWM``) and RSS after, the growth against
``--max-output-total`` + 64 MiB, and how many guests were cut as ``slow_consumer``. Run with
``--max-output-total 0`` for the figure without the bound. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storm import Frames, frame, raise_nofile, wait_listening

HOST = "127.0.0.1"
MIB = 1024 * 1024


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def non_reader(port: int) -> tuple[socket.socket, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    _, writer = await asyncio.open_connection(sock=sock)
    return sock, writer


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = int(probe.getsockname()[1])
    workdir = Path(tempfile.mkdtemp(prefix="imchat-outmem-"))
    exe = Path(sys.executable).with_name("imchat")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "imchat"]
    argv = [
        *base, "server", "--host", HOST, "--port", str(port), "--data-dir", str(workdir),
        "--max-output-total", str(args.max_output_total), "--rate", "0", "--addr-rate", "0",
        "--max-connections-per-ip", "0", "--addr-guests-per-minute", "0",
    ]  # fmt: skip
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_listening(port)
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 25)
        frames = Frames(reader)
        writer.write(frame({"type": "hello", "proto": 1, "nick": "writer", "id": "h"}))
        max_text = int((await frames.reply("h"))["max_text"])
        writer.write(frame({"type": "join", "room": "big", "id": "j"}))
        await frames.reply("j")
        for i in range(500):
            text = chr(0x1F600 + i % 64) * max_text  # 4 bytes each in UTF-8
            writer.write(frame({"type": "say", "room": "big", "text": text}))
        writer.write(frame({"type": "ping", "id": "p"}))
        await frames.reply("p")
        writer.write(frame({"type": "history", "room": "big", "limit": 500, "id": "size"}))
        reply_size = len(json.dumps(await frames.reply("size"), ensure_ascii=False).encode())
        await asyncio.sleep(1.0)  # let the server settle before the baseline
        rss_before = status_kb(server.pid, "VmRSS")
        guests = []
        for g in range(args.guests):
            sock, gw = await non_reader(port)
            gw.write(frame({"type": "hello", "proto": 1, "nick": f"g{g}"}))
            for _ in range(args.requests):
                gw.write(frame({"type": "history", "room": "big", "limit": 500}))
                gw.write(frame({"type": "rooms"}))
            guests.append((sock, gw))
        # Give the server time to answer everything it will answer (nobody reads).
        peak_rss = 0
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, status_kb(server.pid, "VmRSS"))
            await asyncio.sleep(0.1)
        rss_after = status_kb(server.pid, "VmRSS")
        hwm = status_kb(server.pid, "VmHWM")
        # The server logs each connection it closes, with the reason.
        log_text = log_path.read_text(errors="replace")
        cut = log_text.count("slow_consumer the server holds too much unsent output")
        for _, gw in guests:
            gw.transport.abort()
        writer.close()
        growth = (max(peak_rss, rss_after) - rss_before) / 1024
        bound = args.max_output_total / MIB + 64 if args.max_output_total else None
        return {
            "guests": args.guests,
            "requests_each": args.requests,
            "history_reply_mib": round(reply_size / MIB, 2),
            "max_output_total_mib": args.max_output_total / MIB,
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_peak_sampled_mib": round(peak_rss / 1024, 1),
            "vmhwm_mib": round(hwm / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "growth_mib": round(growth, 1),
            "bound_mib": bound,
            "within_bound": bound is None or growth < bound,
            "guests_cut": cut,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=60)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-output-total", type=int, default=256 * MIB)
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    raise_nofile()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
