"""Nodes that reach Redis over TLS (``rediss://``): the appends, the presence scripts and the
subscription each node reads with its own protocol (``redis_raw.PushedSubscription``, which
takes the socket over from redis-py) all work through the TLS transport."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from conftest import free_port
from redis.utils import HIREDIS_AVAILABLE

from imchat.server.redis_raw import PushedSubscription, push_subscription
from imchat.server.redis_store import connect_redis

from .cluster_support import Clients, Cluster, PrivateRedis, is_type


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[PrivateRedis, str]]:
    """A Redis of our own listening with TLS, and the URL nodes reach it with."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = tmp_path / "tls"
    files.mkdir()
    ca.cert_pem.write_to_path(files / "ca.pem")
    cert.private_key_pem.write_to_path(files / "key.pem")
    cert.cert_chain_pems[0].write_to_path(files / "cert.pem")
    tls_port = free_port()
    server = PrivateRedis(
        tmp_path / "redis",
        *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(files / "cert.pem"), "--tls-key-file", str(files / "key.pem")),
        *("--tls-ca-cert-file", str(files / "ca.pem")),
    )
    server.start()
    try:
        yield server, f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={files / 'ca.pem'}"
    finally:
        server.kill()


async def test_users_on_two_nodes_chat_over_a_tls_redis(
    tls_redis: tuple[PrivateRedis, str], tmp_path: Path, prefix: str, clients: Clients
) -> None:
    _, url = tls_redis
    cluster = Cluster(tmp_path / "nodes", prefix, redis_url=url)
    try:
        first, second = cluster.start_many(2)
        alice = await clients.connect(first, "alice")
        bob = await clients.connect(second, "bob")
        for user in (alice, bob):
            await user.request("join", room="lobby")
        for i in range(20):
            await alice.request("say", room="lobby", text=f"m{i}")
        heard = await bob.collect(is_type("msg"), 20)
        assert [event["text"] for event in heard] == [f"m{i}" for i in range(20)]
        await bob.request("say", room="lobby", text="back")
        back = await alice.wait_for(lambda e: e.get("type") == "msg" and e.get("from") == "bob")
        assert back["text"] == "back"
    finally:
        await clients.close()
        cluster.close()


async def test_the_subscription_is_taken_over_through_tls(
    tls_redis: tuple[PrivateRedis, str], prefix: str
) -> None:
    """The take-over itself on a TLS transport (not the fallback): every message in order."""
    if not HIREDIS_AVAILABLE:
        pytest.skip("the take-over needs hiredis")
    _, url = tls_redis
    client = connect_redis(url, blocking=True, prefix=prefix)
    publisher = connect_redis(url, prefix=prefix)
    pubsub = client.pubsub()
    got: list[bytes] = []
    arrived = asyncio.Event()
    pushed: PushedSubscription | None = None

    def take() -> None:
        assert pushed is not None
        got.extend(m[2] for m in pushed.messages() if m[0] == b"message")
        arrived.set()

    try:
        await pubsub.subscribe(f"{prefix}ch")
        pushed = push_subscription(pubsub, take)
        assert pushed is not None, "the TLS subscription was not taken over"
        pushed.poll()
        for i in range(100):
            await publisher.publish(f"{prefix}ch", f"m{i}")
        while len(got) < 100:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert got == [f"m{i}".encode() for i in range(100)]
    finally:
        await pubsub.aclose()
        await client.aclose()
        await publisher.aclose()
