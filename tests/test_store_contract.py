"""The Store contract: every implementation passes the same tests of each method's promise.

Runs against :class:`SQLiteStore` (in a temporary directory) and :class:`RedisStore` (the
real Redis, one key prefix per test, skipped if none answers). A new backend adds itself to
``STORES`` and must pass everything here. Room messages in Redis are stored only for members
(membership lives there, see ``RedisStore``); :func:`member` seeds that, nothing else here
knows which store it tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_REDIS_URL, redis_available

from imchat.protocol.events import AnnounceEvent, DmEvent, MsgEvent
from imchat.server.sqlite_store import SQLiteStore
from imchat.server.store import TOKEN_ID_LENGTH, Draft, RoomInfo, Store, token_id
from imchat.server.streams import StreamId

REDIS_URL = TEST_REDIS_URL
STORES = ["sqlite", "redis"]

LOBBY = StreamId.room("lobby")
AMY_BOB = StreamId.dm("amy", "bob")
NEWS = StreamId.announcements()


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(tmp_path / "imchat.db")
        await sqlite.open()
        yield sqlite
        await sqlite.close()
        return
    if not redis_available():
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    from imchat.server.redis_store import RedisStore

    redis_store = RedisStore(REDIS_URL, prefix=f"imchat-test-{uuid.uuid4().hex}:")
    await redis_store.open()
    try:
        yield redis_store
    finally:
        client = redis_store.redis
        keys = [k async for k in client.scan_iter(match=f"{redis_store.keys.prefix}*")]
        if keys:
            await client.delete(*keys)
        await redis_store.close()


async def member(store: Store, room: str, key: str) -> None:
    """Make ``key`` a member of ``room`` where the store itself checks membership."""
    from imchat.server.redis_store import RedisStore

    if isinstance(store, RedisStore):
        await store.redis.hset(store.keys.members(room), key, key)


def say(text: str, cid: str | None = None, sender: str = "amy") -> Draft:
    return Draft(LOBBY, sender, cid, MsgEvent(room="lobby", from_=sender, text=text))


def dm(
    text: str, *, pending_for: str | None = "bob", cid: str | None = None, max_queued: int = 0
) -> Draft:
    """A DM from amy to bob (identities named like their nicks, as accounts from before
    revision 2 are); ``pending_for`` None: bob is online."""
    event = DmEvent(from_="amy", to="bob", text=text)
    return Draft(
        AMY_BOB,
        "amy",
        cid,
        event,
        pending_for,
        owner="amy",
        dm_idents=("amy", "bob"),
        recipient_ident="bob",
        max_queued=max_queued,
    )


async def take_pending(store: Store, ident: str) -> list[bytes]:
    """Read an identity's queued DMs and remove them, as a hello that wrote them does."""
    items = await store.peek_pending(ident, 100)
    await store.drop_pending(ident, [(stream, seq) for stream, seq, _ in items])
    return [payload for _, _, payload in items]


def decoded(payloads: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(p) for p in payloads]


# -- users and accounts ---------------------------------------------------------------------


async def test_users_are_remembered_with_their_first_spelling(store: Store) -> None:
    assert await store.lookup_user("amy") is None
    await store.remember_user("Amy")
    await store.remember_user("AMY")
    record = await store.lookup_user("amy")
    assert record is not None and record.nick == "Amy" and record.account is None


async def test_accounts_are_created_listed_and_removed(store: Store) -> None:
    await store.remember_user("bob")
    await store.create_account("Bob", password_hash="h1")
    await store.create_account("Admin", admin=True)
    record = await store.lookup_user("bob")
    assert record is not None and record.account is not None
    assert (record.account.nick, record.account.admin, record.account.password_hash) == (
        "Bob",
        False,
        "h1",
    )
    assert [a.nick for a in await store.list_accounts()] == ["Admin", "Bob"]
    admin = await store.lookup_user("admin")
    assert admin is not None and admin.account is not None and admin.account.admin
    assert admin.account.password_hash is None

    await store.add_token("bob", "f" * 64, "laptop")
    assert await store.remove_account("bob")
    record = await store.lookup_user("bob")
    assert record is not None and record.account is None  # a guest again, still known
    assert await store.token_owner("f" * 64) is None  # its tokens went with the account
    assert not await store.remove_account("bob")
    assert not await store.remove_account("nobody")


async def test_set_password_only_for_accounts(store: Store) -> None:
    await store.remember_user("amy")
    assert not await store.set_password("amy", "h")
    assert not await store.set_password("nobody", "h")
    await store.create_account("amy", password_hash="old")
    assert await store.set_password("amy", "new")
    record = await store.lookup_user("amy")
    assert record is not None and record.account is not None
    assert record.account.password_hash == "new"


async def test_tokens_are_found_listed_oldest_first_and_revoked_by_id(store: Store) -> None:
    await store.create_account("amy")
    await store.create_account("bob")
    first, second, third = "a" * 64, "b" * 64, "c" * 64
    await store.add_token("amy", first, "one")
    await store.add_token("bob", second, "two")
    await store.add_token("amy", third, "three")
    assert await store.token_owner(first) == "amy"
    assert await store.token_owner("0" * 64) is None
    assert [t.label for t in await store.list_tokens(None)] == ["one", "two", "three"]
    listed = await store.list_tokens("amy")
    assert [(t.id, t.user, t.label) for t in listed] == [
        (token_id(first), "amy", "one"),
        (token_id(third), "amy", "three"),
    ]
    assert all(len(t.id) == TOKEN_ID_LENGTH and t.created > 0 for t in listed)
    # An id is a whole prefix, never a pattern.
    assert not await store.revoke_token("%")
    assert not await store.revoke_token("a" * (TOKEN_ID_LENGTH - 1))
    assert await store.revoke_token(token_id(first).upper())
    assert await store.token_owner(first) is None
    assert not await store.revoke_token(token_id(first))
    assert [t.label for t in await store.list_tokens(None)] == ["two", "three"]


# -- rooms ----------------------------------------------------------------------------------


async def test_rooms_are_created_once_and_keep_their_topic(store: Store) -> None:
    assert await store.room("lobby") is None
    assert await store.create_room("lobby") == RoomInfo("lobby", "", 0)
    await store.set_topic("lobby", "welcome")
    assert await store.create_room("lobby") == RoomInfo("lobby", "welcome", 0)
    await store.create_room("dev")
    assert sorted((r.name, r.topic) for r in await store.rooms()) == [
        ("dev", ""),
        ("lobby", "welcome"),
    ]
    await store.set_topic("lobby", "")
    info = await store.room("lobby")
    assert info is not None and info.topic == ""


async def test_room_last_seq_follows_appends(store: Store) -> None:
    await store.create_room("lobby")
    await member(store, "lobby", "amy")
    for n in range(3):
        await store.append(say(f"m{n}"))
    info = await store.room("lobby")
    assert info is not None and info.last_seq == 3
    assert [r.last_seq for r in await store.rooms() if r.name == "lobby"] == [3]


# -- messages -------------------------------------------------------------------------------


async def test_append_assigns_gapless_seqs_per_stream(store: Store) -> None:
    await store.create_room("lobby")
    await member(store, "lobby", "amy")
    seqs = []
    for n in range(5):
        seqs.append((await store.append(say(f"m{n}"))).seq)
        if n % 2:
            seqs.append((await store.append(dm(f"d{n}"))).seq)
    news = await store.append(Draft(NEWS, "amy", None, AnnounceEvent(from_="amy", text="hi")))
    assert seqs == [1, 2, 1, 3, 4, 2, 5]
    assert news.seq == 1


async def test_stored_payload_is_the_event_with_seq_and_ts(store: Store) -> None:
    await store.create_room("lobby")
    await member(store, "lobby", "amy")
    draft = Draft(LOBBY, "amy", None, MsgEvent(room="lobby", from_="amy", text="hi", kind="action"))
    stored = await store.append(draft)
    assert not stored.duplicate
    assert round(stored.ts, 3) == stored.ts
    assert json.loads(stored.payload) == {
        "type": "msg",
        "room": "lobby",
        "from": "amy",
        "text": "hi",
        "kind": "action",
        "seq": 1,
        "ts": stored.ts,
    }
    assert await store.history(LOBBY, after=None, before=None, limit=10) == [stored.payload]


async def test_repeated_cid_returns_the_first_message_and_stores_nothing(store: Store) -> None:
    await store.create_room("lobby")
    await member(store, "lobby", "amy")
    await member(store, "lobby", "bob")
    first = await store.append(say("once", cid="c1"))
    again = await store.append(say("twice", cid="c1"))
    assert again.duplicate
    assert (again.seq, again.ts, again.payload) == (first.seq, first.ts, first.payload)
    # One namespace per sender across streams ...
    elsewhere = await store.append(dm("other stream", cid="c1"))
    assert elsewhere.duplicate and elsewhere.seq == first.seq
    # ... and none shared between senders.
    bobs = await store.append(say("bob's", cid="c1", sender="bob"))
    assert not bobs.duplicate and bobs.seq == 2
    texts = [m["text"] for m in decoded(await store.history(LOBBY, after=0, before=None, limit=9))]
    assert texts == ["once", "bob's"]
    assert await store.history(AMY_BOB, after=None, before=None, limit=9) == []


async def test_history_anchors(store: Store) -> None:
    for n in range(1, 8):
        await store.append(dm(f"m{n}", pending_for=None))

    async def seqs(
        after: int | None = None, before: int | None = None, limit: int = 3
    ) -> list[int]:
        payloads = await store.history(AMY_BOB, after=after, before=before, limit=limit)
        return [m["seq"] for m in decoded(payloads)]

    assert await seqs() == [5, 6, 7]  # the latest, oldest first
    assert await seqs(after=2) == [3, 4, 5]  # the first after
    assert await seqs(before=3) == [1, 2]  # the last before
    assert await seqs(after=1, before=4) == [2, 3]
    assert await seqs(after=1, before=7, limit=2) == [2, 3]
    assert await seqs(after=7) == []
    assert await seqs(after=0, limit=100) == [1, 2, 3, 4, 5, 6, 7]
    assert await store.history(StreamId.room("nowhere"), after=None, before=None, limit=5) == []


async def test_pending_dms_are_taken_once_oldest_first(store: Store) -> None:
    first = await store.append(dm("one"))
    second = await store.append(dm("two"))
    # Read, they stay queued (rev 2: until written to a session); dropped, they are gone.
    assert [p for _, _, p in await store.peek_pending("bob", 10)] == [
        first.payload,
        second.payload,
    ]
    assert await take_pending(store, "bob") == [first.payload, second.payload]
    assert await take_pending(store, "bob") == []
    assert await take_pending(store, "amy") == []


async def test_a_full_queue_refuses_and_stores_nothing(store: Store) -> None:
    from imchat.protocol import ProtocolError

    await store.append(dm("one", max_queued=2))
    await store.append(dm("two", max_queued=2))
    with pytest.raises(ProtocolError) as caught:
        await store.append(dm("three", max_queued=2))
    assert caught.value.code == "limit_reached"
    assert len(await store.history(AMY_BOB, after=None, before=None, limit=9)) == 2


def dm_from(sender: str, text: str, source: str) -> Draft:
    """A DM from ``sender`` to an offline bob, counted against ``source``'s share (2 of 9)."""
    return Draft(
        StreamId.dm(sender, "bob"),
        sender,
        None,
        DmEvent(from_=sender, to="bob", text=text),
        "bob",
        owner=sender,
        dm_idents=(sender, "bob"),
        recipient_ident="bob",
        max_queued=9,
        max_queued_per_sender=2,
        queue_source=source,
    )


async def test_a_share_is_counted_per_source_across_senders(store: Store) -> None:
    """Two guest nicks of one address are one source; another address is another."""
    from imchat.protocol import ProtocolError

    await store.append(dm_from("amy", "one", "a:192.0.2.1"))
    await store.append(dm_from("cy", "two", "a:192.0.2.1"))
    with pytest.raises(ProtocolError) as caught:
        await store.append(dm_from("dee", "three", "a:192.0.2.1"))
    assert caught.value.code == "limit_reached"
    assert await store.history(StreamId.dm("dee", "bob"), after=None, before=None, limit=9) == []
    await store.append(dm_from("dee", "three", "a:192.0.2.2"))
    assert [e["text"] for e in decoded(await take_pending(store, "bob"))] == [
        "one",
        "two",
        "three",
    ]
    # Delivered: the share is back.
    await store.append(dm_from("eve", "four", "a:192.0.2.1"))


async def test_guest_identities_claim_resume_and_taken(store: Store) -> None:
    from imchat.server.store import ClaimStatus

    new = await store.claim_guest("Gus", None, "r1", 300)
    assert new.status is ClaimStatus.NEW and new.identity is not None
    again = await store.claim_guest("gus", "r1", "r2", 300)
    assert again.status is ClaimStatus.RESUMED and again.identity == new.identity
    assert (await store.claim_guest("gus", None, "r3", 300)).status is ClaimStatus.TAKEN
    assert (await store.claim_guest("gus", "wrong", "r3", 300)).status is ClaimStatus.TAKEN
    await store.create_account("gus")  # accounts outrank guests
    assert (await store.claim_guest("gus", "r1", "r4", 300)).status is ClaimStatus.ACCOUNT
    identity = await store.identity("gus")
    assert identity is not None and identity.account is not None
    assert identity.ident != new.identity.ident


async def test_epoch_is_stable_for_a_store(store: Store) -> None:
    epoch = await store.epoch()
    assert epoch and await store.epoch() == epoch


async def test_a_pending_dm_is_claimed_once_or_taken_never_both(store: Store) -> None:
    first = await store.append(dm("one"))
    second = await store.append(dm("two"))
    assert await store.claim_pending("bob", AMY_BOB, first.seq)
    assert not await store.claim_pending("bob", AMY_BOB, first.seq)
    assert await take_pending(store, "bob") == [second.payload]
    assert not await store.claim_pending("bob", AMY_BOB, second.seq)
    assert not await store.claim_pending("bob", AMY_BOB, 99)


async def test_set_pending_makes_a_dm_undelivered_again(store: Store) -> None:
    stored = await store.append(dm("one"))
    assert await take_pending(store, "bob") == [stored.payload]
    await store.set_pending("bob", AMY_BOB, stored.seq)
    assert await take_pending(store, "bob") == [stored.payload]
