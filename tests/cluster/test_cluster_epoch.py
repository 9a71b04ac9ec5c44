"""A store that lost acknowledged writes gets a new epoch on every node (issue 13).

``welcome.epoch`` must change whenever seqs a client may have seen can be handed out again:
a Redis without persistence that restarts empty under running nodes, or another node that
found Redis lost writes (it rotates ``P epoch``). The Sentinel failover to a lagging replica
is in ``test_cluster_lagging_failover.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import redis

from .cluster_support import (
    REDIS_URL,
    TIMEOUT,
    Client,
    Clients,
    Cluster,
    Node,
    PrivateRedis,
    connect_retrying,
)


async def _epoch_of(clients: Clients, node: Node, nick: str) -> tuple[Client, str]:
    client = await connect_retrying(clients, node, nick)
    welcome = client.conn.welcome
    assert welcome is not None
    return client, str(welcome["epoch"])


async def test_redis_restarted_empty_gives_every_node_a_new_epoch(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    try:
        nodes = cluster.start_many(2, node_timeout=3.0)
        alice, before = await _epoch_of(clients, nodes[0], "alice")
        _, on_other = await _epoch_of(clients, nodes[1], "bob")
        assert on_other == before
        await alice.request("join", room="lobby")
        said = [await alice.request("say", room="lobby", text=f"m{i}") for i in range(3)]
        assert [s["seq"] for s in said] == [1, 2, 3]

        # No persistence: the restarted Redis is empty, and seqs start at 1 again.
        private_redis.kill()
        private_redis.start()
        for node in nodes:
            await node.wait_log("joined the cluster as node", count=2)
        alice, after = await _epoch_of(clients, nodes[0], "alice")
        _, on_other = await _epoch_of(clients, nodes[1], "bob")
        assert after != before
        assert on_other == after
        await alice.request("join", room="lobby")
        again = await alice.request("say", room="lobby", text="new")
        assert again["seq"] == 1  # a seq seen before, under a new epoch: not a duplicate
    finally:
        for node in cluster.nodes:
            node.stop()


async def test_an_epoch_rotated_elsewhere_ends_the_sessions_of_every_node(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    nodes = cluster.start_many(2, node_timeout=1.5)
    watchers = [await clients.connect(node, f"w{i}") for i, node in enumerate(nodes)]
    # What a node that found lost writes does (redis_epoch.ROTATE_EPOCH_LUA), done here.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(f"{prefix}epoch", "rotated-elsewhere")
    finally:
        client.close()
    for watcher in watchers:
        # Within one heartbeat: its seqs may be void, so it must reconnect.
        await asyncio.wait_for(watcher.conn.wait_closed(), TIMEOUT)
        assert watcher.conn.closed_error is not None
        assert watcher.conn.closed_error["code"] == "shutting_down"
    for i, node in enumerate(nodes):
        await node.wait_log("the store's epoch changed to rotated-elsewhere")
        _, epoch = await _epoch_of(clients, node, f"w{i}")
        assert epoch == "rotated-elsewhere"
