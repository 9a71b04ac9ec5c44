"""The client library's connection: what waiting for an event leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imchat.client import Connection, ServerError


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


@pytest.mark.parametrize("nick", ["1bad", "taken"], ids=["bad_nick", "nick_taken"])
async def test_a_refused_hello_leaves_no_task_behind(server: Any, nick: str) -> None:
    """The server refuses the ``hello`` but keeps the connection (``bad_nick``,
    ``nick_taken``); the caller drops the Connection without closing it. Its read task must
    not stay pending ("Task was destroyed but it is pending" when the loop closes): a failed
    hello ends the connection it was sent on."""
    holder = await Connection.connect("127.0.0.1", server.port)
    await holder.hello("taken")
    try:
        before = asyncio.all_tasks()
        conn = await Connection.connect("127.0.0.1", server.port)
        with pytest.raises(ServerError) as refused:
            await conn.hello(nick)
        assert refused.value.code in ("bad_nick", "nick_taken")
        assert conn.closed
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert left == []
    finally:
        await holder.close()
