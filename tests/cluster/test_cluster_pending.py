"""DMs kept for an offline user are read in pages at its next hello, and arrive once, in order.

The connect script returns one page of the queue (with its length); the node reads the rest
page by page and delivers every page before anything published after the hello.
"""

from __future__ import annotations

import asyncio
import json
import socket

import redis.asyncio as aioredis

from imchat.protocol import CLIENT_MAX_FRAME, FrameDecoder, encode_message
from imchat.server.redis_fanout import CONNECT_LUA, PENDING_PAGE
from imchat.server.redis_store import RedisStore

from .cluster_support import REDIS_URL, TIMEOUT, Clients, Cluster, is_type


async def test_a_hello_reads_one_page_of_a_long_queue(store: RedisStore) -> None:
    prefix = store.keys.prefix
    queued = [f'{{"type":"dm","seq":{i}}}'.encode() for i in range(1, 2 * PENDING_PAGE + 51)]
    await store.redis.rpush(f"{prefix}pending:gbob", *queued)
    await store.redis.sadd(f"{prefix}nodes", "n0")
    connect = store.redis.register_script(CONNECT_LUA)
    reply = await connect(
        keys=[store.keys.anchor],
        args=[prefix, store.keys.channel, "n0", "bob", "bob", 0, "", "gbob", PENDING_PAGE],
    )
    status, _, _, page, length = reply
    assert status == 1
    assert page == queued[:PENDING_PAGE], "the hello's reply holds one page, the oldest"
    assert length == len(queued)
    # Read, not taken: they leave the queue once written to a session.
    assert await store.redis.llen(f"{prefix}pending:gbob") == len(queued)


async def test_every_hello_reads_the_queue_not_only_the_identitys_first(
    store: RedisStore,
) -> None:
    """A first session that never read kept the queue from the identity's second one."""
    prefix = store.keys.prefix
    queued = [f'{{"type":"dm","seq":{i}}}'.encode() for i in range(1, 4)]
    await store.redis.rpush(f"{prefix}pending:gbob", *queued)
    await store.redis.sadd(f"{prefix}nodes", "n0", "n1")
    connect = store.redis.register_script(CONNECT_LUA)
    replies = [
        await connect(
            keys=[store.keys.anchor],
            args=[prefix, store.keys.channel, node, "bob", "bob", 0, "", "gbob", PENDING_PAGE],
        )
        for node in ("n0", "n1")
    ]
    assert [(status, page, length) for status, _, _, page, length in replies] == [
        (1, queued, 3),  # the first: the identity came online
        (0, queued, 3),  # the second, on another node: the same queue, for itself
    ]


async def queued_dms(prefix: str) -> int:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}pending:*")]
        return sum([await client.llen(k) for k in keys])
    finally:
        await client.aclose()


async def test_a_queue_of_several_pages_arrives_once_in_order_before_live_dms(
    cluster: Cluster, clients: Clients, prefix: str
) -> None:
    # One sender queues several pages: beyond the default share of one sender.
    nodes = cluster.start_many(2, extra=("--max-queued-per-sender", "0"))
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    await alice.request("dm", to="bob", text="hi")
    await bob.wait_for(is_type("dm"))
    await bob.close()
    await alice.wait_for(is_type("offline", nick="bob"))
    count = 2 * PENDING_PAGE + 50
    for i in range(count):
        await alice.request("dm", to="bob", text=f"q{i}")
    bob = await clients.connect(nodes[0], "bob")  # bob's held identity, on the other node
    await alice.request("dm", to="bob", text="live")
    got = await bob.collect(is_type("dm"), count + 1)
    assert [d["text"] for d in got] == [f"q{i}" for i in range(count)] + ["live"]
    assert [d["seq"] for d in got] == list(range(2, count + 3))
    # Written, so dropped from the queue: the next hello gets none of them again.
    async with asyncio.timeout(TIMEOUT):
        while await queued_dms(prefix):
            await asyncio.sleep(0.05)  # polled: no event says the queue was emptied
    await bob.close()
    await alice.wait_for(is_type("offline", nick="bob"))
    bob = await clients.connect(nodes[1], "bob")
    await alice.request("dm", to="bob", text="after")
    dm = await bob.wait_for(is_type("dm"))
    assert dm["text"] == "after", "a pending DM was delivered twice"


async def test_a_stalled_session_on_one_node_holds_no_queued_dm_back_from_another(
    cluster: Cluster, clients: Clients
) -> None:
    """bob's first session reads its welcome and nothing more; his second, on the other
    node, got none of the queue (only an identity's first hello read it), and after the first
    one ended the DMs stayed hidden until every session of bob had gone."""
    nodes = cluster.start_many(2, extra=("--max-queued-per-sender", "0", "--rate", "0"))
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[0], "bob")
    resume = clients.resumes["bob"]
    await alice.request("dm", to="bob", text="hi")  # peers: alice hears bob go
    await bob.wait_for(is_type("dm"))
    await bob.close()
    await alice.wait_for(is_type("offline", nick="bob"))
    count = PENDING_PAGE + 50
    for i in range(count):
        await alice.request("dm", to="bob", text=f"{i:04d} " + "x" * 3990)
    stalled = await stalled_session(nodes[0].port, "bob", resume)
    second = await clients.connect(nodes[1], "bob")
    got = await second.collect(is_type("dm"), count)
    assert [d["text"][:4] for d in got] == [f"{i:04d}" for i in range(count)]
    stalled.close()
    await alice.request("dm", to="bob", text="last")  # nothing resent before it
    assert (await second.wait_for(is_type("dm")))["text"] == "last"


async def stalled_session(port: int, nick: str, resume: str) -> asyncio.StreamWriter:
    """A session with a tiny receive window that reads its welcome and nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        encode_message({"type": "hello", "proto": 1, "nick": nick, "resume": resume, "id": 1})
    )
    decoder = FrameDecoder(CLIENT_MAX_FRAME)
    async with asyncio.timeout(TIMEOUT):
        while True:
            decoder.receive_data(await reader.read(4096))
            payload = decoder.next_frame()
            if payload is not None:
                break
    assert json.loads(payload)["type"] == "welcome"
    return writer
