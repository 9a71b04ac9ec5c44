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
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import raise_fd_limit
from serverproc import HOST, ServerProc, free_port, imchat_command
from storm import Frames, frame

MIB = 1024 * 1024


async def non_reader(port: int) -> tuple[socket.socket, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    _, writer = await asyncio.open_connection(sock=sock)
    return sock, writer


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="imchat-outmem-"))
    argv = [
        *imchat_command(), "server", "--host", HOST, "--port", str(port),
        "--data-dir", str(workdir), "--max-output-total", str(args.max_output_total),
        "--rate", "0", "--addr-rate", "0", "--max-connections-per-ip", "0",
        "--addr-guests-per-minute", "0",
    ]  # fmt: skip
    log_path = workdir / "server.log"
    server = ServerProc("imchat", argv, log_path=log_path, port=port, data_dir=workdir)
    try:
        await server.start(30.0)
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
        rss_before = server.rss_kb()
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
            peak_rss = max(peak_rss, server.rss_kb())
            await asyncio.sleep(0.1)
        rss_after = server.rss_kb()
        hwm = server.hwm_kb()
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
        server.stop(20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=60)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-output-total", type=int, default=256 * MIB)
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    raise_fd_limit()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
