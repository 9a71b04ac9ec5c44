"""Presence, DMs and announcements across nodes; a node killed; Redis missing or lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from imchat.client import ConnectionClosed, ServerError

from .cluster_support import (
    REDIS_URL,
    TIMEOUT,
    Clients,
    Cluster,
    PrivateRedis,
    delete_keys,
    free_port,
    is_type,
    server_command,
)


async def test_users_and_online_offline_across_nodes(cluster: Cluster, clients: Clients) -> None:
    """``users`` lists everyone; ``online``/``offline`` reach DM peers and room mates only."""
    nodes = cluster.start_many(3)
    alice = await clients.connect(nodes[0], "alice")
    carol = await clients.connect(nodes[2], "carol")
    bob = await clients.connect(nodes[1], "Bob")
    for person in (alice, bob, carol):
        users = (await person.request("users"))["users"]
        assert sorted(users) == ["Bob", "alice", "carol"]
    await bob.request("dm", to="alice", text="hi")  # peers from now on
    await alice.wait_for(is_type("dm"))
    await bob.close()
    await alice.wait_for(is_type("offline", nick="Bob"))
    assert sorted((await carol.request("users"))["users"]) == ["alice", "carol"]
    bob = await clients.connect(nodes[2], "Bob")  # the same guest identity, another node
    await alice.wait_for(is_type("online", nick="Bob"))
    await carol.request("ping")
    carol.drain_now()
    assert not any(e.get("nick") == "Bob" for e in carol.seen), "carol shares nothing with Bob"


async def test_guest_nick_is_unique_across_nodes(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(2)
    await clients.connect(nodes[0], "alice")
    with pytest.raises(ServerError) as caught:
        await clients.connect(nodes[1], "ALICE", fresh=True)
    assert caught.value.code == "nick_taken"
    # Its own resume is a second session of the same identity, on another node.
    await clients.connect(nodes[1], "ALICE")


async def test_user_with_sessions_on_two_nodes_goes_offline_after_the_last(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    watcher = await clients.connect(nodes[0], "watcher")
    await watcher.request("join", room="lobby")
    await watcher.request("dm", to="admin", text="hi")  # DM peers: presence reaches watcher
    first = await clients.admin(nodes[0])
    await watcher.wait_for(is_type("online", nick="admin"))
    await first.request("join", room="lobby")
    second = await clients.admin(nodes[1])
    await first.close()
    await second.request("say", room="lobby", text="still here")
    # The message proves the first session's end was processed without an offline/part.
    msg = await watcher.wait_for(is_type("msg", room="lobby"))
    assert msg["text"] == "still here"
    assert not any(e["type"] in ("offline", "parted") for e in watcher.seen)
    await second.close()
    parted = await watcher.wait_for(is_type("parted", room="lobby", nick="admin"))
    assert parted["reason"] == "quit"
    await watcher.wait_for(is_type("offline", nick="admin"))
    await watcher.request("ping")
    assert sum(is_type("offline", nick="admin")(e) for e in watcher.seen) == 1


async def test_dm_to_user_on_other_node_delivered_live_once(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(3)
    alice = await clients.connect(nodes[0], "alice")
    bob_a = await clients.admin(nodes[1])
    bob_b = await clients.admin(nodes[2])
    reply = await alice.request("dm", to="ADMIN", text="hello there")
    assert reply["seq"] == 1
    for session in (alice, bob_a, bob_b):
        dm = await session.wait_for(is_type("dm"))
        assert (dm["from"], dm["to"], dm["seq"], dm["text"]) == ("alice", "admin", 1, "hello there")
    await bob_a.request("dm", to="alice", text="reply")
    for session in (alice, bob_a, bob_b):
        dm = await session.wait_for(is_type("dm"))
        assert (dm["seq"], dm["text"]) == (2, "reply")
    # Nothing was left pending: a new session gets no DM after its welcome.
    third = await clients.admin(nodes[0])
    await third.request("ping")
    await alice.request("dm", to="admin", text="marker")
    dm = await third.wait_for(is_type("dm"))
    assert dm["text"] == "marker"


async def test_dm_to_offline_user_delivered_once_at_next_hello_on_any_node(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    await alice.request("dm", to="bob", text="hi")  # DM peers: alice hears bob leave
    await bob.wait_for(is_type("dm"))
    await alice.wait_for(is_type("dm"))
    await bob.close()
    await alice.wait_for(is_type("offline", nick="bob"))
    with pytest.raises(ServerError) as caught:
        await alice.request("dm", to="nobody", text="?")
    assert caught.value.code == "no_such_user"
    for text in ("one", "two"):
        await alice.request("dm", to="bob", text=text)
    echoes = await alice.collect(is_type("dm"), 2)
    assert [e["text"] for e in echoes] == ["one", "two"]
    bob = await clients.connect(nodes[0], "bob")  # bob's held identity, on another node
    got = await bob.collect(is_type("dm"), 2)
    assert [(d["from"], d["text"], d["seq"]) for d in got] == [
        ("alice", "one", 2),
        ("alice", "two", 3),
    ]
    await bob.close()
    await alice.wait_for(is_type("offline", nick="bob"))
    bob = await clients.connect(nodes[1], "bob")
    await alice.request("dm", to="bob", text="live")
    dm = await bob.wait_for(is_type("dm"))
    assert dm["text"] == "live", "a pending DM was delivered twice"


async def test_announcement_reaches_every_session_on_every_node(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(3)
    admin = await clients.admin(nodes[0])
    others = [await clients.connect(node, f"u{i}") for i, node in enumerate(nodes)]
    admin_b = await clients.admin(nodes[2])
    reply = await admin.request("announce", text="maintenance at noon", cid="ann-1")
    assert reply["seq"] == 1
    assert reply["delivered"] == 5
    for session in (admin, admin_b, *others):
        event = await session.wait_for(is_type("announce"))
        assert (event["from"], event["seq"], event["text"]) == ("admin", 1, "maintenance at noon")
    again = await admin_b.request("announce", text="maintenance at noon", cid="ann-1")
    assert (again["seq"], again["delivered"]) == (1, 0)
    with pytest.raises(ServerError) as caught:
        await others[1].request("announce", text="me too")
    assert caught.value.code == "forbidden"
    history = (await others[2].request("history", announcements=True))["messages"]
    assert [m["text"] for m in history] == ["maintenance at noon"]


async def test_killed_node_users_go_offline_within_the_timeout(
    cluster: Cluster, clients: Clients
) -> None:
    node_timeout = 1.5
    nodes = cluster.start_many(3, node_timeout=node_timeout)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    doomed = await clients.connect(nodes[2], "doomed")
    for person in (alice, bob, doomed):
        await person.request("join", room="lobby")
    await alice.wait_for(is_type("joined", nick="doomed"))
    await bob.wait_for(is_type("joined", nick="doomed"))
    killed_at = time.monotonic()
    nodes[2].kill()
    # Bounded: the heartbeat expires after node_timeout, and survivors check every third.
    bound = node_timeout * 2 + 1.0
    for person in (alice, bob):
        parted = await person.wait_for(is_type("parted", room="lobby", nick="doomed"), bound)
        assert parted["reason"] == "quit"
        await person.wait_for(is_type("offline", nick="doomed"), bound)
    assert time.monotonic() - killed_at < bound
    # Each survivor saw the quit once, and the rest keep chatting.
    for person in (alice, bob):
        assert sum(1 for e in person.seen if is_type("offline", nick="doomed")(e)) == 1
    assert sorted((await bob.request("users"))["users"]) == ["alice", "bob"]
    members = (await alice.request("join", room="lobby"))["members"]
    assert sorted(members) == ["alice", "bob"]
    await alice.request("say", room="lobby", text="are we alone?")
    msg = await bob.wait_for(is_type("msg", room="lobby"))
    assert msg["text"] == "are we alone?"
    assert not any(e["type"] in ("offline", "parted") and e["nick"] != "doomed" for e in bob.seen)
    # The guest identity is held (rev 2): a stranger is refused, its resume gets it back.
    with pytest.raises(ServerError) as caught:
        await clients.connect(nodes[1], "doomed", fresh=True)
    assert caught.value.code == "nick_taken"
    await clients.connect(nodes[1], "doomed")


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_redis_unavailable_at_start_exits_with_one_line(tmp_path: Path, via: str) -> None:
    dead_port = free_port()
    url = f"redis://127.0.0.1:{dead_port}/0"
    args = ["--port", "0", "--data-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMCHAT_")}
    if via == "flag":
        args += ["--redis", url]
    else:
        env["IMCHAT_REDIS_URL"] = url
    result = subprocess.run(
        server_command(*args), capture_output=True, text=True, timeout=TIMEOUT * 2, env=env
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("imchat:")]
    assert len(errors) == 1
    assert "Redis" in errors[0] and str(dead_port) in errors[0]
    assert "Traceback" not in result.stderr


async def test_redis_lost_while_running_tells_clients_and_never_acks(
    tmp_path: Path, private_redis: PrivateRedis, clients: Clients
) -> None:
    cluster = Cluster(tmp_path, "imchat-test-lost:", redis_url=private_redis.url)
    try:
        node = cluster.start_many(1)[0]
        alice = await clients.connect(node, "alice")
        await alice.request("join", room="lobby")
        await alice.request("say", room="lobby", text="before")
        private_redis.kill()
        # The node tells its client why it goes away; a say in flight is never acked.
        try:
            reply = await alice.request("say", room="lobby", text="during")
        except (ServerError, ConnectionClosed):
            pass
        else:
            raise AssertionError(f"acked a message Redis could not store: {reply}")
        await asyncio.wait_for(alice.conn.wait_closed(), TIMEOUT)
        assert alice.conn.closed_error is not None
        assert alice.conn.closed_error["code"] == "shutting_down"
        # New clients are refused while Redis is away.
        with pytest.raises((ServerError, ConnectionClosed)):
            await clients.connect(node, "bob")
        # Once Redis is back, the node rejoins by itself and serves again.
        private_redis.start()
        await node.wait_log("joined the cluster as node", count=2)
        bob = await clients.connect(node, "bob")
        await bob.request("join", room="lobby")
        reply = await bob.request("say", room="lobby", text="after")
        msg = await bob.wait_for(is_type("msg", room="lobby"))
        assert (msg["seq"], msg["text"]) == (reply["seq"], "after")
    finally:
        for n in cluster.nodes:
            n.stop()


def test_keys_are_namespaced_by_prefix(cluster: Cluster) -> None:
    import redis

    cluster.start_many(1)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{cluster.prefix}*")]
        assert keys and all(k.startswith(cluster.prefix) for k in keys)
    finally:
        client.close()
    cluster.close()
    delete_keys(cluster.prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert not list(client.scan_iter(match=f"{cluster.prefix}*"))
    finally:
        client.close()


async def test_stalled_node_is_reaped_and_fences_itself_when_it_resumes(
    cluster: Cluster, clients: Clients
) -> None:
    node_timeout = 1.0
    nodes = cluster.start_many(2, node_timeout=node_timeout)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    await bob.request("dm", to="alice", text="hi")  # DM peers: alice hears bob go
    await alice.wait_for(is_type("dm"))
    nodes[1].proc.send_signal(signal.SIGSTOP)
    try:
        await alice.wait_for(is_type("offline", nick="bob"), node_timeout * 2 + 1.0)
    finally:
        nodes[1].proc.send_signal(signal.SIGCONT)
    # Back from its stall, the node learns it was reaped: its sessions are told and closed.
    await asyncio.wait_for(bob.conn.wait_closed(), TIMEOUT)
    assert bob.conn.closed_error is not None
    assert bob.conn.closed_error["code"] == "shutting_down"
    # It rejoins as a new node: a client can use it again, and presence is right.
    await nodes[1].wait_log("joined the cluster as node", count=2)
    bob = await clients.connect(nodes[1], "bob")
    await alice.wait_for(is_type("online", nick="bob"))
    assert sorted((await alice.request("users"))["users"]) == ["alice", "bob"]


async def test_node_stopped_gracefully_hands_its_users_over_at_once(
    cluster: Cluster, clients: Clients
) -> None:
    # A long node timeout: the offline below can only come from the stopping node itself.
    nodes = cluster.start_many(2, node_timeout=60.0)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    for person in (alice, bob):
        await person.request("join", room="lobby")
    await alice.wait_for(is_type("joined", nick="bob"))
    await asyncio.to_thread(nodes[1].stop)
    assert nodes[1].proc.returncode == 0
    await asyncio.wait_for(bob.conn.wait_closed(), TIMEOUT)
    assert bob.conn.closed_error is not None
    assert bob.conn.closed_error["code"] == "shutting_down"
    parted = await alice.wait_for(is_type("parted", room="lobby", nick="bob"), 5.0)
    assert parted["reason"] == "quit"
    await alice.wait_for(is_type("offline", nick="bob"), 5.0)
    assert (await alice.request("users"))["users"] == ["alice"]
