"""RedisStore's account and token methods, in-process against the real Redis."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from imchat.server.redis_store import RedisStore
from imchat.server.store import TokenInfo, token_id

from .cluster_support import REDIS_URL, delete_keys


async def test_accounts(store: RedisStore) -> None:
    await store.remember_user("Guest")
    await store.create_account("Zed", password_hash="h1")
    await store.create_account("amy", admin=True)
    accounts = await store.list_accounts()
    assert [(a.nick, a.admin, a.password_hash) for a in accounts] == [
        ("amy", True, None),
        ("Zed", False, "h1"),
    ]
    assert await store.set_password("zed", "h2")
    assert not await store.set_password("guest", "h3")  # no account
    assert not await store.set_password("nobody", "h3")
    record = await store.lookup_user("zed")
    assert record is not None and record.account is not None
    assert record.account.password_hash == "h2"
    guest = await store.lookup_user("guest")
    assert guest is not None and guest.nick == "Guest" and guest.account is None


async def test_tokens(store: RedisStore) -> None:
    await store.create_account("amy")
    await store.create_account("bob")
    await store.add_token("amy", "a" * 64, "laptop")
    await store.add_token("bob", "b" * 64, "bot")
    await store.add_token("amy", "c" * 64, "phone")
    every = await store.list_tokens(None)
    assert [(t.id, t.user, t.label) for t in every] == [
        ("a" * 12, "amy", "laptop"),
        ("b" * 12, "bob", "bot"),
        ("c" * 12, "amy", "phone"),
    ]
    assert all(isinstance(t, TokenInfo) and t.created > 0 for t in every)
    assert [t.label for t in await store.list_tokens("amy")] == ["laptop", "phone"]
    assert await store.token_owner("c" * 64) == "amy"
    assert await store.revoke_token(token_id("C" * 64))  # ids are compared lower-cased
    assert await store.token_owner("c" * 64) is None
    assert not await store.revoke_token("c" * 12)
    assert not await store.revoke_token("c")  # a shorter prefix names nothing
    # Removing an account revokes its tokens and makes it a guest again.
    assert await store.remove_account("amy")
    assert await store.token_owner("a" * 64) is None
    assert [t.user for t in await store.list_tokens(None)] == ["bob"]
    record = await store.lookup_user("amy")
    assert record is not None and record.account is None
    assert not await store.remove_account("amy")


async def test_history_anchors(store: RedisStore) -> None:
    from imchat.protocol.events import MsgEvent
    from imchat.server.store import Draft
    from imchat.server.streams import StreamId

    await store.create_room("lobby")
    # Stored without a member check: the room has no members hash, so seed one.
    await store.redis.hset(store.keys.members("lobby"), "amy", "amy")
    for n in range(1, 8):
        event = MsgEvent(room="lobby", from_="amy", text=f"m{n}")
        stored = await store.append(Draft(StreamId.room("lobby"), "amy", None, event))
        assert stored.seq == n and stored.published

    async def seqs(**anchors: int | None) -> list[int]:
        import json

        args = {"after": None, "before": None, "limit": 3, **anchors}
        return [json.loads(p)["seq"] for p in await store.history(StreamId.room("lobby"), **args)]

    assert await seqs() == [5, 6, 7]
    assert await seqs(after=2) == [3, 4, 5]
    assert await seqs(before=3) == [1, 2]
    assert await seqs(after=1, before=4) == [2, 3]
    info = await store.room("lobby")
    assert info is not None and info.last_seq == 7


async def test_node_that_cannot_listen_leaves_the_cluster_promptly(
    prefix: str, tmp_path: Path
) -> None:
    import redis.asyncio

    from imchat.server import ChatServer, ServerConfig

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ServerConfig(
            port=taken.getsockname()[1],
            data_dir=tmp_path,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
        )
        server = ChatServer(config)
        with pytest.raises(OSError):
            # Bounded: stopping a fanout that just joined the cluster must not hang.
            await asyncio.wait_for(server.start(), 10)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert await client.smembers(f"{prefix}nodes") == set()
    finally:
        await client.aclose()
        delete_keys(prefix)


async def test_a_new_guest_never_welcomed_frees_its_nick_after_the_claim_grace(
    store: RedisStore,
) -> None:
    # A hello claims a new guest identity, then its connect script counts the session online
    # (and keeps the claim). If Redis or the connection is lost in between, the client never
    # got the welcome with the identity's resume: holding the nick for the whole guest_hold
    # locked its owner out of it (nick_taken for 300 s after a failover).
    from imchat.server.redis_store import CLAIM_GRACE
    from imchat.server.store import ClaimStatus

    new = await store.claim_guest("Gus", None, "r1", 300)
    assert new.status is ClaimStatus.NEW
    ttl = await store.redis.pttl(f"{store.keys.prefix}guest:gus")
    assert 0 < ttl <= CLAIM_GRACE * 1000
    # A resumed identity was welcomed before: its client has the resume, so it is held.
    again = await store.claim_guest("gus", "r1", "r2", 300)
    assert again.status is ClaimStatus.RESUMED
    assert await store.redis.pttl(f"{store.keys.prefix}guest:gus") > CLAIM_GRACE * 1000
