"""The periodic re-check of logged-in sessions costs nothing while no credential changed.

It used to look every guest's identity up in the store every ``auth_recheck`` seconds: on
SQLite one blocking query per guest on the event loop (10,000 guests stalled it for a
third of a second every 10 s: benchmarks/README.md, round 5), over Redis one round trip each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, next_event

from imchat.server.accounts import add_user, set_password

PASSWORD = "correct horse"
LOOKUPS = ("identity", "token_owner", "lookup_user")


def count_lookups(store: Any) -> Counter[str]:
    """Count the per-session lookups the re-check may make, from now on."""
    calls: Counter[str] = Counter()
    for name in LOOKUPS:
        original = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return await _original(*args)

        setattr(store, name, counted)
    return calls


@pytest.mark.server_config(auth_recheck=0)  # the test runs each re-check itself
async def test_recheck_looks_nothing_up_until_a_credential_changes(
    server: Any, connect: Clients
) -> None:
    await add_user(server.store, "owner", PASSWORD)
    owner = await connect("owner", password=PASSWORD)
    guests = {nick: await connect(nick) for nick in ("g0", "g1", "g2", "g3")}
    await server.hub.recheck_credentials()  # nothing changed since the start

    calls = count_lookups(server.store)
    for _ in range(3):
        await server.hub.recheck_credentials()
    assert sum(calls.values()) == 0, calls

    # An account for a guest's nick ends that guest, at the next re-check.
    await add_user(server.store, "g3", PASSWORD)
    await server.hub.recheck_credentials()
    error = await next_event(guests["g3"], "error", timeout=TIMEOUT)
    assert error["code"] == "nick_taken"
    assert calls["identity"] >= 1
    # A new password ends the sessions logged in with the old one.
    await set_password(server.store, "owner", "another horse")
    await server.hub.recheck_credentials()
    error = await next_event(owner, "error", timeout=TIMEOUT)
    assert error["code"] == "auth_failed"
    for nick in ("g0", "g1", "g2"):
        assert (await guests[nick].request("ping"))["type"] == "pong"


@pytest.mark.server_config(auth_recheck=0)
async def test_the_first_recheck_after_start_looks_up_only_after_a_change(
    server: Any, connect: Clients
) -> None:
    """A restart's reconnect storm is under way at the first re-check (10 s in): it looks
    nothing up unless a credential changed since the start (round 9)."""
    guests = {nick: await connect(nick) for nick in ("g0", "g1", "g2")}
    calls = count_lookups(server.store)
    await server.hub.recheck_credentials()
    assert sum(calls.values()) == 0, calls
    await add_user(server.store, "g2", PASSWORD)  # a change after the start is still seen
    await server.hub.recheck_credentials()
    error = await next_event(guests["g2"], "error", timeout=TIMEOUT)
    assert error["code"] == "nick_taken"
    for nick in ("g0", "g1"):
        assert (await guests[nick].request("ping"))["type"] == "pong"


@pytest.mark.server_config(auth_recheck=0)
async def test_a_lookup_that_failed_is_made_again_at_the_next_recheck(
    server: Any, connect: Clients
) -> None:
    guest = await connect("squatter")
    await server.hub.recheck_credentials()
    store = server.store
    identity = store.identity
    failures = []

    async def failing_once(key: str) -> Any:
        if not failures:
            failures.append(key)
            raise ConnectionError("store hiccup")
        return await identity(key)

    store.identity = failing_once
    await add_user(store, "squatter", PASSWORD)
    await server.hub.recheck_credentials()  # the lookup fails: the guest stays, for now
    assert failures == ["squatter"]
    assert (await guest.request("ping"))["type"] == "pong"
    await server.hub.recheck_credentials()  # nothing changed since, but it looks again
    error = await next_event(guest, "error", timeout=TIMEOUT)
    assert error["code"] == "nick_taken"
