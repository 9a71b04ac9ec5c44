"""A node notices what breaks between it and Redis, and no ghost outlives a stated bound.

Faults are made for real: a subscription silenced by a TCP proxy, a node frozen with
SIGSTOP, a Redis of the test's own paused, made read-only or full.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid
from pathlib import Path

import aiohttp
import pytest

from imchat.client import ConnectionClosed, ServerError

from .cluster_support import (
    REDIS_URL,
    TIMEOUT,
    BlackHoleProxy,
    Clients,
    Cluster,
    PrivateRedis,
    connect_retrying,
    is_type,
)


async def test_silenced_subscription_is_noticed_and_clients_resume_from_history(
    cluster: Cluster, clients: Clients
) -> None:
    node_timeout = 2.0
    proxy = BlackHoleProxy(int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    try:
        speaker_node = cluster.start(node_timeout=node_timeout)
        deaf_node = cluster.start(node_timeout=node_timeout, redis_url=proxy.url())
        for node in (speaker_node, deaf_node):
            # In a thread: the proxy runs on this loop and must serve the node meanwhile.
            await asyncio.to_thread(node.wait_listening)
        alice = await clients.connect(speaker_node, "alice")
        bob = await clients.connect(deaf_node, "bob")
        await alice.request("join", room="lobby")
        await bob.request("join", room="lobby")
        await bob.wait_for(is_type("joined", room="lobby", nick="bob"))
        first = await alice.request("say", room="lobby", text="before")
        await bob.wait_for(is_type("msg", seq=first["seq"]))

        proxy.silence_subscriptions()
        acked = [await alice.request("say", room="lobby", text=f"m{i}") for i in range(5)]
        # Bob's node hears nothing more; within the node timeout (plus one ping interval)
        # it says so, and tells bob, whose client resumes from history.
        await asyncio.wait_for(bob.conn.wait_closed(), node_timeout * 2 + TIMEOUT)
        assert bob.conn.closed_error is not None
        assert bob.conn.closed_error["code"] == "shutting_down"
        await deaf_node.wait_log("nothing arrived on the subscription")
        await deaf_node.wait_log("joined the cluster as node", count=2)
        bob = await clients.connect(deaf_node, "bob")
        await bob.request("join", room="lobby")
        history = await bob.request("history", room="lobby", after=first["seq"])
        assert [m["seq"] for m in history["messages"]] == [a["seq"] for a in acked]
        # And live delivery works again on the node's new subscription.
        again = await alice.request("say", room="lobby", text="after")
        await bob.wait_for(is_type("msg", seq=again["seq"]))
    finally:
        await proxy.close()


async def test_disconnect_while_redis_is_paused_leaves_no_ghost(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    # Longer than the pause: a stall that short must not cost anyone their session.
    node_timeout = 8.0
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    try:
        node = cluster.start_many(1, node_timeout=node_timeout)[0]
        watcher = await clients.connect(node, "watcher")
        ghost = await clients.connect(node, "ghost")
        for person in (watcher, ghost):
            await person.request("join", room="lobby")
        await watcher.wait_for(is_type("joined", room="lobby", nick="ghost"))
        # Longer than a command may take (5 s): the disconnect script times out.
        private_redis.command("CLIENT", "PAUSE", "5500", "ALL")
        ghost.conn.abort()
        await node.wait_log("could not record that ghost left")
        # Once Redis answers again, the node lets the ghost go within a heartbeat or two.
        parted = await watcher.wait_for(
            is_type("parted", room="lobby", nick="ghost"), node_timeout * 2 + TIMEOUT
        )
        assert parted["reason"] == "quit"
        assert "ghost" not in (await watcher.request("users"))["users"]
        # The nick is free again, and the watcher was never cut off.
        again = await clients.connect(node, "ghost")
        assert (await again.request("ping"))["type"] == "pong"
        assert not watcher.conn.closed
    finally:
        for n in cluster.nodes:
            n.stop()


def command_calls(redis: PrivateRedis, command: str) -> int:
    """How many times the server ran ``command`` so far (``INFO commandstats``)."""
    stats = redis.command("INFO", "commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_heartbeats_read_the_node_records_only_after_a_failure(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    """Reading what Redis records of a node's users costs the loop O(users) (~25 ms of CPU
    at 16,667): a heartbeat reads them only when a connect or disconnect script failed (the
    test above shows such a ghost still goes)."""
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    try:
        node = cluster.start_many(1, node_timeout=1.5)[0]  # a heartbeat each 0.5 s
        alice = await clients.connect(node, "alice")
        await alice.request("join", room="lobby")
        read_before = command_calls(private_redis, "hgetall")
        scripts = command_calls(private_redis, "evalsha")
        deadline = asyncio.get_running_loop().time() + TIMEOUT * 2
        while command_calls(private_redis, "evalsha") < scripts + 4:  # heartbeats, idle
            assert asyncio.get_running_loop().time() < deadline, "no heartbeats"
            await asyncio.sleep(0.1)  # polling a count the node's heartbeats raise
        assert command_calls(private_redis, "hgetall") == read_before
    finally:
        for n in cluster.nodes:
            n.stop()


async def _refusing_writes_keeps_sessions(
    tmp_path: Path,
    private_redis: PrivateRedis,
    clients: Clients,
    refuse: list[str],
    allow: list[str],
) -> None:
    node_timeout = 1.5
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    try:
        node = cluster.start_many(1, node_timeout=node_timeout)[0]
        alice = await clients.connect(node, "alice")
        await alice.request("join", room="lobby")
        stored = await alice.request("say", room="lobby", text="before", cid="c-before")

        private_redis.command(*refuse)
        # Writes are answered `internal` (outcome unknown: retry with the same cid)...
        try:
            reply = await alice.request("say", room="lobby", text="during", cid="c-during")
        except ServerError as exc:
            assert exc.code == "internal"
        else:
            raise AssertionError(f"acked a message Redis refused: {reply}")
        # ...and well past the node timeout the session is still served what can be served.
        await node.wait_log("cannot refresh this node's heartbeat")
        await node.wait_log("sessions stay")  # logged once refusals outlast the node timeout
        history = await alice.request("history", room="lobby")
        assert [m["text"] for m in history["messages"]] == ["before"]
        assert (await alice.request("users"))["users"] == ["alice"]
        assert not alice.conn.closed

        # Once Redis takes writes again, the node recovers by itself; the retry is stored once.
        private_redis.command(*allow)
        await node.wait_log("Redis accepts this node's writes again")
        retried = await alice.request("say", room="lobby", text="during", cid="c-during")
        again = await alice.request("say", room="lobby", text="during", cid="c-during")
        assert retried["seq"] == again["seq"] == stored["seq"] + 1
        assert not alice.conn.closed
    finally:
        for n in cluster.nodes:
            n.stop()


async def test_read_only_redis_keeps_sessions_and_recovers(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    # A replica of a primary that is not there: read-only, serving what it has.
    await _refusing_writes_keeps_sessions(
        tmp_path,
        private_redis,
        clients,
        refuse=["REPLICAOF", "127.0.0.1", "1"],
        allow=["REPLICAOF", "NO", "ONE"],
    )


async def test_full_redis_keeps_sessions_and_recovers(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    await _refusing_writes_keeps_sessions(
        tmp_path,
        private_redis,
        clients,
        refuse=["CONFIG", "SET", "maxmemory", "1"],
        allow=["CONFIG", "SET", "maxmemory", "0"],
    )


async def test_frozen_member_never_hears_not_in_room(cluster: Cluster, clients: Clients) -> None:
    node_timeout = 1.0
    nodes = cluster.start_many(2, node_timeout=node_timeout)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    for person in (alice, bob):
        await person.request("join", room="lobby")
    await alice.wait_for(is_type("joined", room="lobby", nick="bob"))
    nodes[1].proc.send_signal(signal.SIGSTOP)
    try:
        await alice.wait_for(is_type("parted", room="lobby", nick="bob"), node_timeout * 2 + 2)
        # Bob, unaware, pipelines says to his frozen node.
        says = [
            asyncio.ensure_future(
                bob.conn.request("say", room="lobby", text=f"frozen {i}", cid=f"f{i}")
            )
            for i in range(20)
        ]
    finally:
        nodes[1].proc.send_signal(signal.SIGCONT)
    results = await asyncio.gather(*says, return_exceptions=True)
    codes = [r.code for r in results if isinstance(r, ServerError)]
    assert "not_in_room" not in codes, codes
    # The node learns it was reaped and closes bob's session (his pipelined requests may
    # make the kernel reset the connection before the last frame is read).
    await asyncio.wait_for(bob.conn.wait_closed(), TIMEOUT)
    if bob.conn.closed_error is not None:
        assert bob.conn.closed_error["code"] == "shutting_down"


HTTP_AT = re.compile(r"HTTP API at http://[^:]+:(\d+)")


async def test_a_hello_while_redis_is_down_is_told_shutting_down(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    """Between losing Redis and getting it back, a node tells every new client what it told
    the sessions it closed (``shutting_down``: the server lost its cluster store, try another
    node or later) instead of ``internal`` from the store read a hello starts with; guests
    and accounts alike, and the HTTP API (503 ``shutting_down``). It serves again once Redis
    is back."""
    cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=private_redis.url)
    try:
        (node,) = cluster.start_many(1, node_timeout=3.0, extra=("--http-port", "0"))
        [http_port] = [int(m[1]) for line in node.lines if (m := HTTP_AT.search(line))]
        api = f"http://127.0.0.1:{http_port}/api/v1/rooms/lobby/messages"
        headers = {"Authorization": f"Bearer {node.admin_token}"}
        alice = await clients.connect(node, "alice")
        private_redis.kill()
        await node.wait_log("lost Redis")
        with contextlib.suppress(ConnectionClosed):
            while True:
                await alice.next_event()
        for nick, token in (("bob", None), ("admin", node.admin_token)):
            conn = await clients.connect_raw(node)
            with pytest.raises((ServerError, ConnectionClosed)) as caught:
                await asyncio.wait_for(conn.hello(nick, token=token), TIMEOUT)
            error = caught.value
            code = error.code if isinstance(error, ServerError) else (error.error or {}).get("code")
            assert code == "shutting_down", (nick, error)
            await asyncio.wait_for(conn.wait_closed(), TIMEOUT)
        async with (
            aiohttp.ClientSession() as http,
            http.post(api, json={"text": "hi"}, headers=headers) as response,
        ):
            body = await response.json()
            assert (response.status, body["code"]) == (503, "shutting_down"), body
            assert response.headers["Retry-After"]
        private_redis.start()
        await node.wait_log("joined the cluster as node", count=2)
        back = await connect_retrying(clients, node, "carol")
        assert back.conn.welcome is not None
    finally:
        for node in cluster.nodes:
            node.stop()
