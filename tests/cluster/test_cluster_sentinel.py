"""Nodes behind Sentinel follow a failover of the primary by themselves.

The test starts a primary, two replicas and three Sentinels of its own, kills the primary with
SIGKILL during traffic, and checks that every acknowledged message is there once, in order,
with gapless seqs (``--redis-wait 1``: an ``ok`` means the replica had it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imchat.client import ServerError

from .cluster_support import (
    Clients,
    Cluster,
    PrivateRedis,
    assert_history_once_and_gapless,
    connect_retrying,
    say_through_fault,
)
from .sentinel_support import SentinelSet, running_sentinels


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with running_sentinels(tmp_path / "redis") as servers:
        yield servers


@pytest.mark.timeout(60)
async def test_failover_during_traffic_loses_and_doubles_nothing(
    tmp_path: Path, sentinels: SentinelSet, clients: Clients
) -> None:
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=sentinels.url)
    try:
        nodes = cluster.start_many(2, node_timeout=3.0, extra=("--redis-wait", "1"))
        texts = [f"m{i}" for i in range(40)]
        acked = await say_through_fault(clients, nodes[0], texts, 15, sentinels.primary.kill)
        sender = await connect_retrying(clients, nodes[0], "sender", room="lobby")
        await sentinels.sentinels[0].wait_log("+switch-master")
        reader = await connect_retrying(clients, nodes[1], "reader", room="lobby")
        await assert_history_once_and_gapless(reader, texts, acked)
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
