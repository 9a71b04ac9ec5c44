"""Redis CPU per room message, by room size and number of nodes: the append script alone.

    python benchmarks/redis_say.py [--says 3000]

Starts a Redis of its own on a free port (``redis-server`` on PATH), makes a room of N
members spread over 1 or 3 nodes with the real connect and join scripts, then runs the
append script for ``--says`` room messages (pipelined, 200 per round trip) and reads Redis's
CPU time (``INFO cpu``) around them. Nobody subscribes, so publishing costs only the script's
side; what Redis spends pushing envelopes to subscribers comes on top. Everything listens on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time

import redis

from imchat.server.redis_fanout import CONNECT_LUA, JOIN_LUA
from imchat.server.redis_store import APPEND_LUA

PREFIX = "bench:"
#: No persistence: the CPU measured is the scripts'.
QUIET = ("--save", "", "--appendonly", "no", "--dir")
BODY = '{"type":"msg","room":"lobby","from":"u0","text":"hello there"'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def make_room(r: redis.Redis, members: int, nodes: int) -> None:
    r.flushall()
    connect, join = r.register_script(CONNECT_LUA), r.register_script(JOIN_LUA)
    for n in range(nodes):
        r.sadd(f"{PREFIX}nodes", f"n{n}")
    for i in range(members):
        key = f"u{i}"
        args = [PREFIX, f"{PREFIX}events", f"n{i % nodes}", key, key, 0, "", key]
        connect(keys=[f"{PREFIX}seq"], args=args)
        join(keys=[f"{PREFIX}seq"], args=[PREFIX, f"{PREFIX}events", key, key, "lobby", ""])


def says(r: redis.Redis, count: int) -> float:
    """Redis CPU µs per room message."""
    sha = r.script_load(APPEND_LUA)
    before = cpu(r)
    for start in range(0, count, 200):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(200, count - start)):
            pipe.evalsha(
                sha, 1, f"{PREFIX}seq", PREFIX, "r:lobby", "", BODY, "", "u0", "u0", "", 0, "1"
            )
        pipe.execute()
    return (cpu(r) - before) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--says", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="imchat-bench-redis-") as workdir:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *QUIET, workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            r = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print("| members | nodes | Redis CPU µs per room message |")
            print("| --- | --- | --- |")
            for members in (40, 400, 1000):
                for nodes in (1, 3):
                    make_room(r, members, nodes)
                    print(f"| {members} | {nodes} | {says(r, args.says):.1f} |")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
