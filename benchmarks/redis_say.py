"""Redis CPU per room message, by room size and number of nodes: the append script alone.

    python benchmarks/redis_say.py [--says 3000]

Starts a Redis of its own on a free port (``redis-server`` on PATH), makes a room of N
members spread over 1 or 3 nodes with the real connect and join scripts, then runs the
append script for ``--says`` room messages (pipelined, 200 per round trip) and reads Redis's
CPU time (``INFO cpu``) around them. Nobody subscribes, so publishing costs only the script's
side; what Redis spends pushing envelopes to subscribers comes on top. Everything listens on
127.0.0.1.

Then presence: a user with N DM peers (``P since:<ident>`` naming N DM streams), a tenth of
them online, comes online and goes offline ``--presence`` times (the connect script of its
first session, the disconnect script of its last); reported are Redis commands per
connect + disconnect (commands called from the scripts included: a count the noisy machine
does not move) and Redis CPU per pair.

``PYTHONPATH=DIR`` (a checkout from ``git archive REV imchat``) measures another revision's
scripts.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time

import redis

from imchat.server.redis_fanout import CONNECT_LUA, DISCONNECT_LUA, JOIN_LUA
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
        args = [PREFIX, f"{PREFIX}events", f"n{i % nodes}", key, key, 0, "", key, 100]
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


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def presence(r: redis.Redis, peers: int, count: int) -> tuple[float, float]:
    """Redis commands and CPU µs per connect + disconnect of a user with ``peers`` DM peers."""
    r.flushall()
    connect, disconnect = r.register_script(CONNECT_LUA), r.register_script(DISCONNECT_LUA)
    r.sadd(f"{PREFIX}nodes", "n0")
    ident = "gme"
    for i in range(peers):
        r.hset(f"{PREFIX}since:{ident}", f"d:me p{i:05d}", 1)
        if i % 10 == 0:  # a tenth of them online
            peer = f"p{i:05d}"
            connect(
                keys=[f"{PREFIX}seq"], args=[PREFIX, "", "n0", peer, peer, 0, "", "g" + peer, 100]
            )
    before_cmds, before_cpu = commands(r), cpu(r)
    for _ in range(count):
        connect(keys=[f"{PREFIX}seq"], args=[PREFIX, "", "n0", "me", "me", 0, "", ident, 100])
        disconnect(keys=[f"{PREFIX}seq"], args=[PREFIX, "", "n0", "me", 0, ident])
    probe = 2  # INFO stats and INFO cpu of the second reading
    return (commands(r) - before_cmds - probe) / count, (cpu(r) - before_cpu) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--says", type=int, default=3000)
    parser.add_argument("--presence", type=int, default=300, help="connect + disconnect pairs")
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
            print()
            print("| DM peers (a tenth online) | Redis commands per connect + disconnect "
                  "| Redis CPU µs per pair |")  # fmt: skip
            print("| --- | --- | --- |")
            for peers in (0, 100, 1000, 5000):
                n, us = presence(r, peers, args.presence)
                print(f"| {peers} | {n:.0f} | {us:.0f} |")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
