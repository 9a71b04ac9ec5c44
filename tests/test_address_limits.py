"""Message/join budgets and failed logins per client address, across sessions and nodes.

All test clients come from 127.0.0.1, one address. On the Redis backend two servers share the
test's key prefix, as the nodes of one cluster do.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import REDIS_BACKEND_URL, Clients, RawClient, Servers

from imchat.server.addrlimits import LocalAddressLimits, RedisAddressLimits
from imchat.server.auth import hash_password

PASSWORD = "correct horse battery"
LIMITS = {"rate": 100.0, "burst": 100, "addr_rate": 0.01, "addr_burst": 6}


async def spend(raw: RawClient, nick: str, says: int) -> list[str]:
    """Join and say ``says`` times; the reply codes of the says."""
    await raw.hello(nick)
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    codes = []
    for i in range(says):
        reply = await raw.request({"type": "say", "room": "lobby", "text": f"{i}", "id": i})
        codes.append(str(reply.get("code", reply["type"])))
    return codes


async def test_one_address_shares_one_budget_across_its_sessions(
    servers: Servers, connect: Clients
) -> None:
    server = await servers.start(**LIMITS)
    codes = []
    for i in range(3):
        codes += await spend(await connect.raw(port=server.port), f"s{i}", 3)
    # Six tokens for the address: two joins and four says (the third join is refused too);
    # every session alone had plenty.
    assert codes.count("ok") == 4
    assert codes.count("rate_limited") == 5


async def test_per_address_limit_can_be_disabled(servers: Servers, connect: Clients) -> None:
    server = await servers.start(**{**LIMITS, "addr_rate": 0})
    codes = []
    for i in range(3):
        codes += await spend(await connect.raw(port=server.port), f"s{i}", 3)
    assert codes == ["ok"] * 9


async def test_a_budget_that_allows_everything_is_not_asked_per_message(
    servers: Servers, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``addr_rate`` 0: a say spends nothing, so neither budget (this process's, or the one
    shared in Redis, whose ``take`` is a coroutine) is asked for one."""
    asked: list[str] = []
    local_take_now = LocalAddressLimits.take_now
    shared_take = RedisAddressLimits.take

    def take_now(self: LocalAddressLimits, addr: str) -> bool:
        asked.append(addr)
        return local_take_now(self, addr)

    async def take(self: RedisAddressLimits, addr: str) -> bool:
        asked.append(addr)
        return await shared_take(self, addr)

    monkeypatch.setattr(LocalAddressLimits, "take_now", take_now)
    monkeypatch.setattr(RedisAddressLimits, "take", take)
    server = await servers.start(**{**LIMITS, "addr_rate": 0})
    raw = await connect.raw(port=server.port)
    await raw.hello("sayer")
    await raw.request({"type": "join", "room": "lobby", "id": "j"})
    before = len(asked)
    for i in range(5):
        reply = await raw.request({"type": "say", "room": "lobby", "text": f"{i}", "id": i})
        assert reply["type"] == "ok"
    assert len(asked) == before


@pytest.mark.skipif(REDIS_BACKEND_URL is None, reason="a cluster shares Redis")
async def test_nodes_of_a_cluster_share_the_address_budget(
    servers: Servers, connect: Clients, tmp_path: Any
) -> None:
    one = await servers.start(**LIMITS)
    two = await servers.start(data_dir=tmp_path / "two", **LIMITS)
    codes = await spend(await connect.raw(port=one.port), "a", 2)
    codes += await spend(await connect.raw(port=two.port), "b", 2)
    codes += await spend(await connect.raw(port=one.port), "c", 2)
    assert codes.count("ok") == 4  # six tokens: three joins (one refused) and four says


async def login(raw: RawClient, password: str) -> str:
    reply = await raw.request(
        {"type": "hello", "proto": 1, "nick": "alice", "password": password, "id": 1}
    )
    return str(reply.get("code", reply["type"]))


@pytest.mark.skipif(REDIS_BACKEND_URL is None, reason="a cluster shares Redis")
async def test_nodes_of_a_cluster_share_the_failed_login_limit(
    servers: Servers, connect: Clients, tmp_path: Any
) -> None:
    one = await servers.start(auth_failures=2)
    two = await servers.start(data_dir=tmp_path / "two", auth_failures=2)
    await one.store.create_account("alice", password_hash=hash_password(PASSWORD))
    assert await login(await connect.raw(port=one.port), "wrong 1") == "auth_failed"
    assert await login(await connect.raw(port=two.port), "wrong 2") == "auth_failed"
    # Two failures in the cluster: both nodes now refuse this address, right password or not.
    assert await login(await connect.raw(port=one.port), PASSWORD) == "rate_limited"
    assert await login(await connect.raw(port=two.port), PASSWORD) == "rate_limited"
