"""The registry's flush: after a long flush the next one rests (events arriving meanwhile
share writes), except once committed messages were answered (``Registry.hurry``): their
senders wait for those replies, so they leave at the loop turn's end."""

from __future__ import annotations

import asyncio
from typing import Any

from imchat.server.registry import Registry

TIMEOUT = 10.0


class Flushed:
    """A session that notes when it was flushed."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def flush(self) -> None:
        self.log.append(self.name)


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_flush_after_a_long_one_rests_and_hurry_ends_the_rest() -> None:
    loop = asyncio.get_running_loop()
    registry = Registry(loop)
    log: list[str] = []
    # A long flush happened: the next one rests (up to FLUSH_REST_MAX).
    registry._rest_until = loop.time() + 30.0
    registry.mark_dirty(Flushed(log, "event"))  # type: ignore[arg-type]
    await turns(3)
    assert log == []  # resting
    registry.hurry()  # a run's replies were queued
    await turns(2)
    assert log == ["event"]
    assert registry._resting is None


async def test_hurry_without_a_rest_changes_nothing() -> None:
    loop = asyncio.get_running_loop()
    registry = Registry(loop)
    log: list[str] = []
    registry.mark_dirty(Flushed(log, "a"))  # type: ignore[arg-type]
    registry.hurry()
    await turns(2)
    assert log == ["a"]  # flushed once, at the turn's end
    registry.hurry()
    await turns(2)
    assert log == ["a"]


async def test_answered_says_leave_without_the_rest(server: Any, connect: Any) -> None:
    """Through a real server: with a rest of a minute pending, a say's ``ok`` and its event
    still leave at once."""
    ann, bob = await connect("ann"), await connect("bob")
    await ann.request("join", room="lobby")
    await bob.request("join", room="lobby")
    await ann.next_event(TIMEOUT)  # bob joined
    server.hub.registry._rest_until = asyncio.get_running_loop().time() + 60.0
    reply = await asyncio.wait_for(ann.request("say", room="lobby", text="hi"), TIMEOUT)
    assert reply["type"] == "ok"
    event = await bob.next_event(TIMEOUT)
    while event["type"] != "msg":  # presence from before (ann joined, came online)
        assert event["type"] in ("joined", "online"), event
        event = await bob.next_event(TIMEOUT)
    assert event["text"] == "hi"
