"""The garbage-collection policy: when the heap is frozen, and why freezing sessions is safe."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RawClient

from imchat.server.gcpolicy import YOUNG_THRESHOLD, FreezePolicy, _set_young_threshold


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def policy(self, min_growth: int = 100) -> FreezePolicy:
        return FreezePolicy(
            collect=lambda: self.calls.append("collect") or 0,  # type: ignore[func-returns-value]
            freeze=lambda: self.calls.append("freeze"),
            unfreeze=lambda: self.calls.append("unfreeze"),
            set_young_threshold=lambda young: self.calls.append(f"young {young}"),
            min_growth=min_growth,
        )


def test_start_freezes_the_setup_and_collects_the_young_less_often() -> None:
    rec = Recorder()
    rec.policy().start()
    assert rec.calls == ["collect", "freeze", f"young {YOUNG_THRESHOLD}"]


def test_the_young_threshold_leaves_the_older_generations_alone() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        _set_young_threshold(5_000)
        assert gc.get_threshold() == (5_000, 11, 12)
    finally:
        gc.set_threshold(*saved)


def test_freezes_once_a_grown_population_has_settled() -> None:
    rec = Recorder()
    policy = rec.policy()
    assert not policy.tick(50)  # growing
    assert not policy.tick(99)  # settled, but not grown enough
    assert not policy.tick(400)  # grown, still arriving
    assert rec.calls == []
    assert policy.tick(402)  # within 1 %: settled
    assert rec.calls == ["unfreeze", "collect", "freeze"]  # cycles in the old frozen set too
    assert policy.frozen_sessions == 402
    assert not policy.tick(402)  # nothing new: no more collections
    assert not policy.tick(480)  # +78: below the 100 minimum
    assert not policy.tick(480)
    assert policy.freezes == 1


def test_growth_needed_is_a_quarter_of_the_frozen_population() -> None:
    rec = Recorder()
    policy = rec.policy()
    policy.tick(10_000)
    assert policy.tick(10_000)
    assert not policy.tick(12_000) and not policy.tick(12_000)  # +20 %
    assert not policy.tick(12_600)
    assert policy.tick(12_600)  # +26 %
    assert policy.frozen_sessions == 12_600


def test_refreezes_when_the_frozen_population_has_halved() -> None:
    rec = Recorder()
    policy = rec.policy()
    policy.tick(1000)
    policy.tick(1000)
    rec.calls.clear()
    policy.tick(600)
    assert not policy.tick(600)  # most of it still there
    policy.tick(499)
    assert policy.tick(499)  # what they left behind becomes collectable
    assert rec.calls == ["unfreeze", "collect", "freeze"]
    assert policy.frozen_sessions == 499


@pytest.fixture
def gc_saving_all() -> Iterator[None]:
    """The cycle collector off, and what it finds kept in ``gc.garbage`` for inspection."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_closed_sessions_leave_no_cycles(server: Any, gc_saving_all: None) -> None:
    """Freezing sessions is only safe if a closed one is freed by reference counting: a
    cycle through a frozen session would never be collected."""
    from imchat.server.peer import User
    from imchat.server.session import Session

    clients = [await RawClient.open(server.port) for _ in range(3)]
    for i, client in enumerate(clients):
        await client.hello(f"gc{i}")
        assert (await client.request({"type": "join", "room": "gc", "id": "j"}))["type"] == "ok"
    ok = await clients[0].request({"type": "say", "room": "gc", "text": "hi", "id": "s"})
    assert ok["type"] == "ok"
    for client in clients:
        client.writer.close()
    await asyncio.wait_for(server.hub.all_closed(), 10)
    await server.hub.drain_tasks(10)  # the users' leaving
    gc.collect()
    leaked = [o for o in gc.garbage if isinstance(o, Session | User)]
    assert leaked == []


async def test_the_sweep_ticks_the_policy(server: Any) -> None:
    ticked = asyncio.Event()
    seen: list[int] = []

    def tick(sessions: int) -> bool:
        seen.append(sessions)
        ticked.set()
        return False

    server.gc_policy.tick = tick
    client = await RawClient.open(server.port)
    await client.hello("gcsweep")
    ticked.clear()
    await asyncio.wait_for(ticked.wait(), 10)
    assert seen[-1] == 1
