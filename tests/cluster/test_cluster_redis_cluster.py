"""imchat nodes on a Redis Cluster of three shards, created by the test.

All of imchat's keys share one hash tag, so they live on the one shard serving its slot; the
nodes publish and subscribe on shard channels of that slot. The tests check what a client
sees across nodes (rooms, DMs, announcements; every acknowledged message once, gapless
seqs), where the data and channels are, and that a failover of the shard's primary to its
replica during traffic loses and doubles nothing while the nodes recover by themselves.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from imchat.server.redis_shard import prefix_slot, tagged_prefix

from .cluster_support import (
    TIMEOUT,
    Clients,
    Cluster,
    PrivateRedis,
    assert_history_once_and_gapless,
    connect_retrying,
    delete_keys,
    free_port,
    is_type,
    say_through_fault,
)


def cluster_args(workdir: Path) -> tuple[str, ...]:
    """A cluster node: its bus on a free port of its own (not port + 10000, maybe taken)."""
    return (
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        str(free_port()),
        "--cluster-config-file",
        str(workdir / "nodes.conf"),
        "--cluster-node-timeout",
        "1000",
    )


class RedisClusterSet:
    """Three primaries with a replica each, on free ports, joined by ``redis-cli --cluster``."""

    def __init__(self, base: Path, shards: int = 3) -> None:
        self.servers = [PrivateRedis(base / f"redis{i}") for i in range(shards * 2)]
        self.shards = shards

    def start(self) -> None:
        for server in self.servers:
            server.extra = cluster_args(server.workdir)
            server.start()
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
        )
        if created.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{created.stdout}")
        for server in self.servers:
            server.wait_log_sync("Cluster state changed: ok")
        for server in self.replicas():
            server.wait_log_sync("MASTER <-> REPLICA sync: Finished with success")

    def role(self, server: PrivateRedis) -> str:
        return str(server.command("ROLE")[0].decode())

    def replicas(self) -> list[PrivateRedis]:
        return [s for s in self.servers if self.role(s) == "slave"]

    def owner(self, slot: int) -> PrivateRedis:
        """The primary serving ``slot`` now, by what the servers themselves say."""
        for server in self.servers:
            if server.proc is None or server.proc.poll() is not None:
                continue
            with contextlib.suppress(Exception):
                for start, end, primary, *_ in server.command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(s for s in self.servers if s.port == port)
        raise AssertionError(f"nobody serves slot {slot}")

    def replica_of(self, primary: PrivateRedis) -> PrivateRedis:
        node_id = primary.command("CLUSTER", "MYID").decode()
        for server in self.replicas():
            if server.command("ROLE")[2] == primary.port and node_id:
                return server
        raise AssertionError("the primary has no replica")

    @property
    def url(self) -> str:
        # Two seeds are enough: any live node can say who serves the slot.
        seeds = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:2])
        return f"redis+cluster://{seeds}"

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    servers = RedisClusterSet(tmp_path / "redis")
    try:
        try:
            servers.start()
        except AssertionError as exc:
            if "cluster" in str(exc).lower() and "support" in str(exc).lower():
                pytest.skip(f"this redis-server has no cluster support: {exc}")
            raise
        yield servers
    finally:
        servers.stop()


def prefix_keys(server: PrivateRedis, prefix: str) -> list[bytes]:
    cursor, found = 0, []
    while True:
        cursor, keys = server.command("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", 1000)
        found.extend(keys)
        if int(cursor) == 0:
            return list(found)


@pytest.mark.timeout(120)
async def test_three_nodes_on_a_three_shard_cluster(
    tmp_path: Path, redis_cluster: RedisClusterSet, clients: Clients
) -> None:
    prefix = f"imchat-test-{uuid.uuid4().hex}:"
    cluster = Cluster(tmp_path, prefix, redis_url=redis_cluster.url)
    try:
        nodes = cluster.start_many(3)
        alice = await clients.connect(nodes[0], "alice")
        bob = await clients.connect(nodes[1], "bob")
        carol = await clients.connect(nodes[2], "carol")
        admin = await clients.admin(nodes[2])
        for member in (alice, bob, carol):
            await member.request("join", room="lobby")
        said = []
        for i in range(30):
            sender = (alice, bob, carol)[i % 3]
            reply = await sender.request("say", room="lobby", text=f"m{i}", cid=f"c{i}")
            said.append(reply["seq"])
        assert said == list(range(1, 31))
        for member in (alice, bob, carol):
            msgs = await member.collect(is_type("msg", room="lobby"), 30)
            assert [m["seq"] for m in msgs] == said
            assert [m["text"] for m in msgs] == [f"m{i}" for i in range(30)]
        # A repeated cid is answered with the stored seq, not stored again.
        again = await alice.request("say", room="lobby", text="m0", cid="c0")
        assert again["seq"] == 1
        # DMs across nodes, both ways, once each.
        await alice.request("dm", to="bob", text="hello bob")
        dm = await bob.wait_for(is_type("dm"))
        assert (dm["from"], dm["text"], dm["seq"]) == ("alice", "hello bob", 1)
        await bob.request("dm", to="alice", text="hi alice")
        dm = await alice.wait_for(is_type("dm", text="hi alice"))
        assert dm["seq"] == 2
        # An announcement reaches every session on every node.
        reply = await admin.request("announce", text="maintenance")
        assert reply["delivered"] == 4
        for session in (alice, bob, carol, admin):
            note = await session.wait_for(is_type("announce"))
            assert note["text"] == "maintenance"
        history = await carol.request("history", room="lobby", limit=100)
        assert [m["seq"] for m in history["messages"]] == said
        # Every key is on the shard serving imchat's slot, under the hash tag.
        tagged = tagged_prefix(prefix)
        owner = redis_cluster.owner(prefix_slot(tagged))
        assert prefix_keys(owner, tagged)
        for server in redis_cluster.servers:
            if server is not owner and redis_cluster.role(server) == "master":
                assert prefix_keys(server, tagged) == []
        # Shard channels on that shard: one per node and the all-nodes one; no global ones.
        channels = owner.command("PUBSUB", "SHARDCHANNELS", f"{tagged}*")
        assert len(channels) == 4
        assert owner.command("PUBSUB", "CHANNELS", f"{tagged}*") == []
    finally:
        for node in cluster.nodes:
            node.stop()


@pytest.mark.timeout(150)
async def test_shard_failover_during_traffic_loses_and_doubles_nothing(
    tmp_path: Path, redis_cluster: RedisClusterSet, clients: Clients
) -> None:
    prefix = f"imchat-test-{uuid.uuid4().hex}:"
    cluster = Cluster(tmp_path, prefix, redis_url=redis_cluster.url)
    owner = redis_cluster.owner(prefix_slot(tagged_prefix(prefix)))
    replica = redis_cluster.replica_of(owner)
    try:
        nodes = cluster.start_many(2, node_timeout=3.0)
        # A manual failover: the replica catches up, then takes over the slots; the
        # old primary becomes its replica and answers MOVED.
        texts = [f"m{i}" for i in range(40)]
        acked = await say_through_fault(
            clients, nodes[0], texts, 15, lambda: replica.command("CLUSTER", "FAILOVER")
        )
        await replica.wait_log("Failover election won")
        assert redis_cluster.owner(prefix_slot(tagged_prefix(prefix))) is replica
        reader = await connect_retrying(clients, nodes[1], "reader", room="lobby")
        await assert_history_once_and_gapless(reader, texts, acked)
        # Both nodes serve again by themselves: live delivery across them through the new
        # primary's shard channels.
        sender = await connect_retrying(clients, nodes[0], "sender", room="lobby")
        after = await sender.request("say", room="lobby", text="after", cid="after")
        await reader.wait_for(lambda e: e.get("type") == "msg" and e.get("seq") == after["seq"])
        await nodes[0].wait_log("lost Redis")
    finally:
        for node in cluster.nodes:
            node.stop()
        with contextlib.suppress(Exception):
            delete_keys(tagged_prefix(prefix), f"redis://127.0.0.1:{replica.port}/0")


def add_replica(redis_cluster: RedisClusterSet, primary: PrivateRedis, workdir: Path) -> None:
    """One more replica of ``primary``, met through the cluster bus, synced before return."""
    server = PrivateRedis(workdir)
    server.extra = cluster_args(workdir)
    redis_cluster.servers.append(server)
    server.start()
    bus_port = primary.extra[primary.extra.index("--cluster-port") + 1]
    server.command("CLUSTER", "MEET", "127.0.0.1", str(primary.port), bus_port)
    primary_id = primary.command("CLUSTER", "MYID").decode()
    deadline = time.monotonic() + TIMEOUT
    while True:  # "Unknown node" until the handshake over the cluster bus is done
        try:
            server.command("CLUSTER", "REPLICATE", primary_id)
            break
        except ResponseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    server.wait_log_sync("MASTER <-> REPLICA sync: Finished with success")


@pytest.mark.timeout(150)
async def test_shard_primary_killed_during_traffic_loses_and_doubles_nothing(
    tmp_path: Path, redis_cluster: RedisClusterSet, clients: Clients
) -> None:
    prefix = f"imchat-test-{uuid.uuid4().hex}:"
    owner = redis_cluster.owner(prefix_slot(tagged_prefix(prefix)))
    # Two replicas: after the failover one is left to confirm writes (--redis-wait 1).
    add_replica(redis_cluster, owner, tmp_path / "extra-replica")
    cluster = Cluster(tmp_path, prefix, redis_url=redis_cluster.url)
    try:
        nodes = cluster.start_many(2, node_timeout=3.0, extra=("--redis-wait", "1"))
        # SIGKILL: the cluster promotes a replica by itself.
        texts = [f"m{i}" for i in range(40)]
        acked = await say_through_fault(clients, nodes[0], texts, 15, owner.kill)
        sender = await connect_retrying(clients, nodes[0], "sender", room="lobby")
        assert redis_cluster.owner(prefix_slot(tagged_prefix(prefix))) is not owner
        reader = await connect_retrying(clients, nodes[1], "reader", room="lobby")
        await assert_history_once_and_gapless(reader, texts, acked)
        after = await sender.request("say", room="lobby", text="after", cid="after")
        await reader.wait_for(lambda e: e.get("type") == "msg" and e.get("seq") == after["seq"])
    finally:
        for node in cluster.nodes:
            node.stop()


def test_prefix_becomes_a_hash_tag() -> None:
    assert tagged_prefix("imchat:") == "{imchat:}"
    assert tagged_prefix("a{b}c:") == "a{b}c:"
    assert tagged_prefix("odd{}:") == "{odd{}:}"  # an empty tag is no tag
    assert prefix_slot("{imchat:}") == prefix_slot("{imchat:}user:bob")
