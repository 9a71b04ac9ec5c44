"""The in-process room-creation buckets: a flood of new guest identities (each a hello away)
must not push its address's bucket out of memory, which would hand the address a full burst
again."""

from __future__ import annotations

import pytest

from imchat.server import budgets
from imchat.server.budgets import LocalBuckets


async def test_identity_buckets_do_not_evict_address_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budgets, "MAX_ADDRESSES", 8)
    store = LocalBuckets()
    rate = 1 / 3600  # no refill within the test
    assert await store.take("roomrate:addr", "10.0.0.1", rate, 1)
    assert not await store.take("roomrate:addr", "10.0.0.1", rate, 1)
    for i in range(100):
        await store.take("roomrate:id", f"g.{i}", rate, 1)
    assert not await store.take("roomrate:addr", "10.0.0.1", rate, 1)
    assert len(store) <= 2 * 8
