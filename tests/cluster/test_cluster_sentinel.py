"""Nodes behind Sentinel follow a failover of the primary by themselves.

The test starts a primary, two replicas and three Sentinels of its own, kills the primary with
SIGKILL during traffic, and checks that every acknowledged message is there once, in order,
with gapless seqs (``--redis-wait 1``: an ``ok`` means the replica had it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imchat.client import ConnectionClosed, ServerError

from .cluster_support import TIMEOUT, Client, Clients, Cluster, Node, PrivateRedis

SERVICE = "imchat-primary"


class SentinelSet:
    def __init__(self, base: Path) -> None:
        self.primary = PrivateRedis(base / "primary")
        # Two replicas: after the failover one is left to confirm writes (--redis-wait 1).
        self.replicas = [PrivateRedis(base / f"replica{i}") for i in range(2)]
        self.sentinels = [PrivateRedis(base / f"sentinel{i}") for i in range(3)]

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
            replica.start()
            replica.wait_log_sync("MASTER <-> REPLICA sync: Finished with success")
        for sentinel in self.sentinels:
            config = sentinel.workdir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
            )
            sentinel.extra = (str(config), "--sentinel")
            sentinel.start()
        for sentinel in self.sentinels:
            # It knows the replicas and both other Sentinels: a failover can be agreed.
            sentinel.wait_log_sync("+slave ", count=2)
            sentinel.wait_log_sync("+sentinel ", count=2)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def stop(self) -> None:
        for server in (*self.sentinels, *self.replicas, self.primary):
            server.kill()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    servers = SentinelSet(tmp_path / "redis")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


async def _connect_retrying(clients: Clients, node: Node, nick: str) -> Client:
    """Connect, retrying while the node is between Redis primaries (bounded)."""
    deadline = asyncio.get_running_loop().time() + 4 * TIMEOUT
    while True:
        try:
            client = await clients.connect(node, nick)
            await client.request("join", room="lobby")
            return client
        except (ServerError, ConnectionClosed, OSError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)  # a reconnect backoff, as a client would


@pytest.mark.timeout(60)
async def test_failover_during_traffic_loses_and_doubles_nothing(
    tmp_path: Path, sentinels: SentinelSet, clients: Clients
) -> None:
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=sentinels.url)
    try:
        nodes = cluster.start_many(2, node_timeout=3.0, extra=("--redis-wait", "1"))
        sender = await _connect_retrying(clients, nodes[0], "sender")
        acked: dict[str, int] = {}
        texts = [f"m{i}" for i in range(40)]
        for i, text in enumerate(texts):
            if i == 15:
                sentinels.primary.kill()
            while text not in acked:
                try:
                    reply = await sender.request("say", room="lobby", text=text, cid=text)
                    acked[text] = reply["seq"]
                except (ServerError, ConnectionClosed, TimeoutError):
                    # internal or shutting_down: unknown outcome; resend with the same cid.
                    with contextlib.suppress(Exception):
                        sender.conn.abort()
                    sender = await _connect_retrying(clients, nodes[0], "sender")
        await sentinels.sentinels[0].wait_log("+switch-master")
        reader = await _connect_retrying(clients, nodes[1], "reader")
        history = await reader.request("history", room="lobby", limit=100)
        stored = [(m["seq"], m["text"]) for m in history["messages"]]
        assert stored == [(acked[t], t) for t in texts]
        assert [seq for seq, _ in stored] == list(range(1, len(texts) + 1))
        # Live delivery across nodes works through the new primary's pub/sub too.
        after = await sender.request("say", room="lobby", text="after", cid="after")
        await reader.wait_for(lambda e: e.get("type") == "msg" and e.get("seq") == after["seq"])
    finally:
        for node in cluster.nodes:
            node.stop()


async def test_redis_wait_acks_only_what_a_replica_has(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    replica = PrivateRedis(
        tmp_path / "replica", "--replicaof", "127.0.0.1", str(private_redis.port)
    )
    try:
        node = cluster.start_many(1, extra=("--redis-wait", "1"))[0]
        alice = await clients.connect(node, "alice")
        await alice.request("join", room="lobby")
        # No replica: the message may be stored, but nothing confirms it survives a failover.
        with pytest.raises(ServerError) as refused:
            await alice.request("say", room="lobby", text="hi", cid="c1")
        assert refused.value.code == "internal"
        replica.start()
        await replica.wait_log("MASTER <-> REPLICA sync: Finished with success")
        # The retry with the same cid is confirmed, and was stored once.
        reply = await alice.request("say", room="lobby", text="hi", cid="c1")
        history = await alice.request("history", room="lobby")
        assert [(m["seq"], m["text"]) for m in history["messages"]] == [(reply["seq"], "hi")]
    finally:
        replica.kill()
        for n in cluster.nodes:
            n.stop()
