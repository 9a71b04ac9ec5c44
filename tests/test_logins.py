"""Logins: correct passwords share the per-address budget; token-only accounts fail as slowly.

Run on both backends (the ``server`` fixture follows ``IMCHAT_TEST_BACKEND``).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients

from imchat.server import auth, authn
from imchat.server.auth import hash_password

PASSWORD = "correct horse battery"


async def login(connect: Clients, nick: str, password: str) -> str:
    raw = await connect.raw()
    reply = await raw.request(
        {"type": "hello", "proto": 1, "nick": nick, "password": password, "id": 1}
    )
    await raw.close()
    return str(reply.get("code", reply["type"]))


@pytest.mark.server_config(auth_logins=3, auth_failures=5)
async def test_correct_password_logins_spend_the_address_budget(
    server: Any, connect: Clients
) -> None:
    await server.store.create_account("alice", password_hash=hash_password(PASSWORD))
    codes = [await login(connect, "alice", PASSWORD) for _ in range(4)]
    assert codes == ["welcome", "welcome", "welcome", "rate_limited"]


async def test_default_login_budget_admits_a_busy_office(server: Any) -> None:
    assert server.config.auth_logins >= 20


async def test_wrong_password_for_a_token_only_account_runs_scrypt(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a password hash the failure used to come back at once (~0.5 ms against ~100 ms),
    telling a scanner which accounts have passwords. Now a dummy hash is verified instead."""
    await server.store.create_account("bot")  # token-only
    await server.store.create_account("carol", password_hash=hash_password(PASSWORD))
    checked: list[str] = []
    real = auth.verify_password

    def spy(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(authn, "verify_password", spy)
    assert await login(connect, "bot", "guess") == "auth_failed"
    assert await login(connect, "carol", "guess") == "auth_failed"
    assert len(checked) == 2
    assert all(encoded.startswith("scrypt$16384$8$1$") for encoded in checked)
    assert checked[0] == auth.dummy_hash()
