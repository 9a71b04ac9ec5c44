"""The in-process room-creation buckets: a flood of new guest identities (each a hello away)
must not push its address's bucket out of memory, which would hand the address a full burst
again."""

from __future__ import annotations

import pytest

from imchat.server import room_budget
from imchat.server.room_budget import LocalBuckets


async def test_identity_buckets_do_not_evict_address_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(room_budget, "MAX_ADDRESSES", 8)
    buckets = LocalBuckets()
    rate = 1 / 3600  # no refill within the test
    assert await buckets.take("addr:10.0.0.1", rate, 1)
    assert not await buckets.take("addr:10.0.0.1", rate, 1)
    for i in range(100):
        await buckets.take(f"id:g.{i}", rate, 1)
    assert not await buckets.take("addr:10.0.0.1", rate, 1)
    assert len(buckets) <= 2 * 8
