"""Routed delivery: an envelope goes only to the nodes hosting one of its recipients.

The test listens on every node's channel (``P ev:<node>``) and the all-nodes channel with one
subscription of its own, so it sees what Redis sent each node, in the one order Redis ran the
scripts in: an envelope seen after another was published after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from .cluster_support import REDIS_URL, TIMEOUT, Client, Clients, Cluster, is_type

#: (channel, hold, op, recipients, payload) as the test's subscription read them.
Envelope = tuple[str, str, str, list[str], bytes]


class Tap:
    """Every envelope Redis publishes for a cluster, with the channel it went to."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.seen: list[Envelope] = []

    async def start(self) -> None:
        await self.pubsub.subscribe(f"{self.prefix}events")
        await self.pubsub.psubscribe(f"{self.prefix}ev:*")

    async def until(self, predicate: Callable[[Envelope], bool]) -> Envelope:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            hold, op, recipients, payload = message["data"].split(b"\n", 3)
            channel = message["channel"].decode()[len(self.prefix) :]
            envelope = (
                channel,
                hold.decode(),
                op.decode(),
                recipients.decode().split(),
                payload,
            )
            self.seen.append(envelope)
            if predicate(envelope):
                return envelope
        raise AssertionError(f"no such envelope; saw {self.seen[-10:]}")

    async def node_of(self, key: str) -> str:
        """The id of the (one) node recording sessions of ``key``."""
        hosts = []
        for raw in await self.redis.smembers(f"{self.prefix}nodes"):
            node = raw.decode()
            if await self.redis.hexists(f"{self.prefix}nodeusers:{node}", key):
                hosts.append(node)
        assert len(hosts) == 1, hosts
        return hosts[0]

    async def smembers(self, name: str) -> set[str]:
        return {raw.decode() for raw in await self.redis.smembers(f"{self.prefix}{name}")}


@asynccontextmanager
async def tapping(prefix: str) -> AsyncIterator[Tap]:
    redis = aioredis.Redis.from_url(REDIS_URL)
    tap = Tap(redis, prefix)
    await tap.start()
    try:
        yield tap
    finally:
        await tap.pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


def carries(text: bytes) -> Callable[[Envelope], bool]:
    return lambda envelope: text in envelope[4]


async def test_a_node_without_recipients_receives_nothing_for_a_room_message(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    nodes = cluster.start_many(3)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    carol = await clients.connect(nodes[2], "carol")
    for member in (alice, bob):
        await member.request("join", room="lobby")
    async with tapping(prefix) as tap:
        ids = [await tap.node_of(nick) for nick in ("alice", "bob", "carol")]
        await alice.request("say", room="lobby", text="members only")
        await bob.wait_for(is_type("msg", text="members only"))
        # carol's DM to alice is published after the room message and goes to carol's node:
        # once the tap has it, it has everything published before.
        await carol.request("dm", to="alice", text="after")
        await tap.until(lambda e: e[0] == f"ev:{ids[2]}" and b"after" in e[4])
        await tap.until(lambda e: e[0] == f"ev:{ids[0]}" and b"after" in e[4])
    room_envelopes = [e for e in tap.seen if b"members only" in e[4]]
    # One envelope per node hosting a member, naming only that node's member.
    assert sorted((e[0], tuple(e[3])) for e in room_envelopes) == sorted(
        [(f"ev:{ids[0]}", ("alice",)), (f"ev:{ids[1]}", ("bob",))]
    )
    assert not [e for e in tap.seen if e[0] in (f"ev:{ids[2]}", "events") and b"lobby" in e[4]]
    # The DM went to the sender's node and the recipient's, nowhere else.
    dm_channels = sorted(e[0] for e in tap.seen if b"after" in e[4])
    assert dm_channels == sorted([f"ev:{ids[0]}", f"ev:{ids[2]}"])


async def test_a_member_moving_between_nodes_gets_each_message_once(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    nodes = cluster.start_many(3)
    alice = await clients.connect(nodes[0], "alice")
    await alice.request("join", room="lobby")
    bob_sessions: list[Client] = [await clients.connect(nodes[1], "bob")]
    await bob_sessions[0].request("join", room="lobby")
    got: dict[int, list[int]] = {}  # session number -> seqs it received

    async def say(text: str) -> int:
        reply = await alice.request("say", room="lobby", text=text)
        seq = int(reply["seq"])
        for number, session in enumerate(bob_sessions):
            if session.conn.closed:
                continue
            msg = await session.wait_for(is_type("msg", room="lobby", text=text))
            got.setdefault(number, []).append(int(msg["seq"]))
        return seq

    s1 = await say("one")
    # A second session on another node is a member at once (membership is the user's).
    bob_sessions.append(await clients.connect(nodes[2], "bob"))
    s2 = await say("two")
    await bob_sessions[0].close()
    s3 = await say("three")
    # Back on the first node, and a third session on the sender's own node.
    bob_sessions.append(await clients.connect(nodes[1], "bob"))
    bob_sessions.append(await clients.connect(nodes[0], "bob"))
    s4 = await say("four")
    await bob_sessions[1].close()
    s5 = await say("five")
    end = await say("end")
    # Exactly once: nothing else arrived at any session between its messages.
    for number, session in enumerate(bob_sessions):
        if session.conn.closed:
            continue
        extra = [e for e in session.drain_now() if e.get("type") == "msg"]
        assert extra == [], (number, extra)
        seqs = [int(e["seq"]) for e in session.seen if e.get("type") == "msg"]
        assert seqs == sorted(set(seqs)) == got[number], (number, seqs)
    assert got[2] == [s4, s5, end] and got[3] == [s4, s5, end]
    assert got[1] == [s2, s3, s4] and got[0] == [s1, s2]
    # Routing state follows the sessions: nodes 1 and 0 host bob now, node 2 none of lobby.
    async with tapping(prefix) as tap:
        ids = [await tap.node_of(nick) for nick in ("alice",)]
        where = {k.decode() for k in await tap.redis.hkeys(f"{prefix}where:bob")}
        assert len(where) == 2 and ids[0] in where
        assert await tap.smembers("rnodes:lobby") == where
        assert await tap.smembers(f"rn:{ids[0]}:lobby") == {"alice", "bob"}


async def test_routes_go_with_the_sessions_on_leaving_and_on_a_reap(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    node_timeout = 2.0
    nodes = cluster.start_many(2, node_timeout=node_timeout)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    carol = await clients.connect(nodes[1], "carol")
    for member in (alice, bob, carol):
        await member.request("join", room="lobby")
    async with tapping(prefix) as tap:
        redis = tap.redis
        here, there = await tap.node_of("alice"), await tap.node_of("bob")
        assert await tap.smembers("rnodes:lobby") == {here, there}
        await bob.close()
        await alice.wait_for(is_type("offline", nick="bob"))
        assert not await redis.exists(f"{prefix}where:bob")
        assert await tap.smembers(f"rn:{there}:lobby") == {"carol"}
        assert await redis.get(f"{prefix}rs:{there}:lobby") == b"carol "
        # carol's node dies: the reap takes its routes with its sessions.
        nodes[1].kill()
        await alice.wait_for(is_type("offline", nick="carol"), node_timeout * 3 + TIMEOUT)
        assert not await redis.exists(f"{prefix}where:carol")
        assert not await redis.exists(f"{prefix}rn:{there}:lobby")
        assert not await redis.exists(f"{prefix}rs:{there}:lobby")
        assert await redis.get(f"{prefix}rs:{here}:lobby") == b"alice "
        assert await tap.smembers("rnodes:lobby") == {here}
        assert await tap.smembers(f"rn:{here}:lobby") == {"alice"}


async def test_a_leave_cuts_only_its_own_key_out_of_the_listed_members(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    """The ``rs:`` string a room's envelopes carry loses exactly the key that left, wherever
    it stands and whatever other key it begins or ends (``al`` of ``alan``, ``lan``)."""
    (node,) = cluster.start_many(1)
    nicks = ["al", "alan", "lan", "bo", "al2"]
    members = {nick: await clients.connect(node, nick) for nick in nicks}
    for member in members.values():
        await member.request("join", room="lobby")
    async with tapping(prefix) as tap:
        here = await tap.node_of("al")
        listed = f"{prefix}rs:{here}:lobby"

        async def leaves(nick: str) -> list[str]:
            await members.pop(nick).close()
            watcher = next(iter(members.values()))
            await watcher.wait_for(is_type("offline", nick=nick))
            raw = await tap.redis.get(listed)
            assert raw.endswith(b" ") and b"  " not in raw and not raw.startswith(b" ")
            return sorted(raw.decode().split())

        assert await leaves("al") == ["al2", "alan", "bo", "lan"]  # the first, a prefix
        assert await leaves("al2") == ["alan", "bo", "lan"]  # the last
        assert await leaves("lan") == ["alan", "bo"]  # in the middle, a suffix
        assert await tap.smembers(f"rn:{here}:lobby") == {"alan", "bo"}
