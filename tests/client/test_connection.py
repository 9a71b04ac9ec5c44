"""The client library's connection: what waiting for an event leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imchat.client import Connection


async def test_a_wait_for_an_event_that_timed_out_leaves_no_task_behind(server: Any) -> None:
    """The queue read it had started was cancelled but not yet finished: a test whose loop
    closed right after left it as garbage ("Exception ignored in Queue.get", in CI)."""
    conn = await Connection.connect("127.0.0.1", server.port)
    try:
        before = asyncio.all_tasks()
        with pytest.raises(TimeoutError):
            await conn.next_event(timeout=0.01)
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert left == []
    finally:
        await conn.close()
