"""The garbage-collection policy: when the heap is frozen, and why freezing sessions is safe."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RawClient

from imchat.server.gcpolicy import (
    MAX_PARTIAL_TICKS,
    YOUNG_THRESHOLD,
    FreezePolicy,
    _set_young_threshold,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def policy(self, min_growth: int = 100, callbacks: list[Any] | None = None) -> FreezePolicy:
        return FreezePolicy(
            callbacks=callbacks,
            collect=lambda generation: self.calls.append(f"collect {generation}") or 0,  # type: ignore[func-returns-value]
            freeze=lambda: self.calls.append("freeze"),
            unfreeze=lambda: self.calls.append("unfreeze"),
            set_young_threshold=lambda young: self.calls.append(f"young {young}"),
            min_growth=min_growth,
        )


def test_start_freezes_the_setup_and_collects_the_young_less_often() -> None:
    rec = Recorder()
    rec.policy(callbacks=[]).start()
    assert rec.calls == ["collect 2", "freeze", f"young {YOUNG_THRESHOLD}"]


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
    assert rec.calls == ["collect 1", "freeze"]  # the young only: the rest survived a pass
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
    assert rec.calls == ["unfreeze", "collect 2", "freeze"]
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


async def test_the_sweep_counts_sessions_that_said_hello(server: Any) -> None:
    """In a connect storm every connection is accepted within a second, long before most
    are served: a count of connections would look settled while the crowd still arrives."""
    ticked = asyncio.Event()
    seen: list[int] = []

    def tick(sessions: int) -> bool:
        seen.append(sessions)
        ticked.set()
        return False

    server.gc_policy.tick = tick
    waiting = [await RawClient.open(server.port) for _ in range(3)]
    client = await RawClient.open(server.port)
    await client.hello("gcsweep")
    while len(server.hub.sessions) < 4:
        ticked.clear()
        await asyncio.wait_for(ticked.wait(), 10)
    ticked.clear()
    await asyncio.wait_for(ticked.wait(), 10)
    assert seen[-1] == 1
    assert len(waiting) == 3


def test_freezes_after_each_collection_while_a_crowd_arrives() -> None:
    """A connect storm: CPython's full collections during growth would visit every session
    arrived so far again and again (0.7-2 s of server CPU for 10,000 users at once), so while
    the population grows, what survived each full collection is frozen, and collected once
    the population settles."""
    rec = Recorder()
    callbacks: list[Any] = []
    policy = rec.policy(callbacks=callbacks)
    policy.start()
    assert callbacks == [policy.after_collection]
    rec.calls.clear()
    gen = {"generation": 2, "collected": 0, "uncollectable": 0}
    policy.after_collection("stop", gen)
    assert rec.calls == []  # not growing: CPython's collections as usual
    assert not policy.tick(2_000)  # +2,000 since the last tick: arriving
    assert policy.growing and rec.calls == []  # nothing collected or frozen by the tick
    policy.after_collection("start", gen)
    for younger in (0, 1):  # they leave cyclic garbage in older generations: left alone
        policy.after_collection("stop", {**gen, "generation": younger})
    assert rec.calls == []
    policy.after_collection("stop", gen)
    policy.after_collection("stop", gen)
    assert rec.calls == ["freeze", "freeze"]  # survivors are not visited again
    assert not policy.tick(6_000)
    assert policy.frozen_sessions == 0  # nothing collected yet
    assert policy.tick(6_010)  # settled: the rest is frozen too
    assert rec.calls == ["freeze", "freeze", "collect 1", "freeze"]
    assert policy.frozen_sessions == 6_010 and not policy.growing
    policy.after_collection("stop", gen)
    assert rec.calls[-1] == "freeze" and len(rec.calls) == 4  # settled: as usual again
    policy.stop()
    assert callbacks == []


def test_freezes_after_each_young_collection_while_a_crowd_arrives() -> None:
    """An all-at-once storm: the sweep's ticks come too late and CPython runs no full
    collection, but its middle ones visit what survived ten young ones. While the population
    read at CPython's middle collections grows by ``min_growth`` from one to the next, each
    collection is followed by a freeze; once it stops growing, none is."""
    rec = Recorder()
    sessions = [10]
    policy = rec.policy(callbacks=[])
    policy.start(lambda: sessions[0])
    rec.calls.clear()
    young, middle = {"generation": 0}, {"generation": 1}
    policy.after_collection("stop", young)
    sessions[0] = 109  # +99 since the start: not a crowd
    policy.after_collection("stop", middle)
    assert not policy.arriving and rec.calls == []
    sessions[0] = 209  # +100 since the last middle collection
    policy.after_collection("start", middle)
    assert rec.calls == []  # decided when it stops
    policy.after_collection("stop", middle)
    assert policy.arriving and rec.calls == ["freeze"]
    sessions[0] = 5_000
    policy.after_collection("stop", young)
    policy.after_collection("stop", young)
    assert rec.calls == ["freeze"] * 3  # what survived them is not visited again
    assert not policy.growing  # the ticks know nothing of it
    policy.after_collection("stop", middle)  # +4,791
    assert policy.arriving and rec.calls == ["freeze"] * 4
    sessions[0] = 5_050
    policy.after_collection("stop", middle)  # +50: arrived
    policy.after_collection("stop", young)
    assert not policy.arriving and rec.calls == ["freeze"] * 4
    assert not policy.tick(5_050) and policy.tick(5_050)  # settled: frozen as before
    assert rec.calls[-2:] == ["collect 1", "freeze"]


def test_a_cycle_frozen_while_a_crowd_arrives_is_freed_at_the_next_halving() -> None:
    """The trade of freezing after young collections, with CPython's real collector: a cycle
    alive at a young collection while a crowd arrives and garbage later is frozen, and
    freed at the next halving."""
    sessions = [0]
    policy = FreezePolicy(set_young_threshold=lambda young: None, min_growth=10)
    policy.start(lambda: sessions[0])
    try:
        sessions[0] = 100
        gc.collect(1)  # CPython's middle collection: a crowd of 100 arrived
        assert policy.arriving
        node = Node()
        ref = weakref.ref(node)
        gc.collect(0)  # it survives a young collection, and is frozen
        del node
        gc.collect(1)  # nobody arrived since: as usual again
        assert not policy.arriving
        gc.collect()
        assert ref() is not None  # frozen: not visited
        policy.tick(100)
        assert policy.tick(100)  # settled
        assert ref() is not None
        policy.tick(40)
        assert policy.tick(40)  # halved
        assert ref() is None
    finally:
        policy.stop()
        gc.unfreeze()


def test_growth_below_a_quarter_is_not_frozen_while_it_arrives() -> None:
    """Each freeze during growth means a full collection once settled: only a growth the
    quarter rule would collect for anyway is frozen as it arrives."""
    rec = Recorder()
    policy = rec.policy(callbacks=[])
    policy.tick(10_000)
    policy.tick(10_000)
    rec.calls.clear()
    gen = {"generation": 2, "collected": 0, "uncollectable": 0}
    assert not policy.tick(12_000)  # +20 % while arriving
    policy.after_collection("stop", gen)
    assert not policy.tick(12_010)  # settled
    assert rec.calls == []
    assert not policy.tick(13_000)  # +30 % of what was frozen, arriving
    policy.after_collection("stop", gen)
    assert rec.calls == ["freeze"]
    assert policy.tick(13_010)
    assert rec.calls == ["freeze", "collect 1", "freeze"]


def test_a_population_that_never_settles_is_still_frozen_now_and_then() -> None:
    rec = Recorder()
    policy = rec.policy(callbacks=[])
    gen = {"generation": 2, "collected": 0, "uncollectable": 0}
    sessions = 1_000
    for _ in range(200):
        sessions = sessions * 11 // 10  # always arriving, never settled
        policy.tick(sessions)
        policy.after_collection("stop", gen)
    assert rec.calls.count("collect 1") >= 200 // (MAX_PARTIAL_TICKS + 1) - 1


def test_its_own_collections_are_not_followed_by_another_freeze() -> None:
    """With CPython's real collections and callbacks: neither the young collection of a
    population still growing nor the full one after a halving is frozen twice."""
    rec = Recorder()

    def collect(generation: int) -> int:
        rec.calls.append(f"collect {generation}")
        return gc.collect(generation)

    policy = FreezePolicy(
        collect=collect,
        freeze=lambda: rec.calls.append("freeze"),
        unfreeze=lambda: rec.calls.append("unfreeze"),
        set_young_threshold=lambda young: None,
        min_growth=100,
    )
    policy.start()
    try:
        policy.tick(5_000)  # growing
        policy.after_collection("stop", {"generation": 2})  # CPython's own, while growing
        rec.calls.clear()
        for _ in range(MAX_PARTIAL_TICKS):
            policy.tick(policy._last * 2)
        assert policy.growing and rec.calls == ["collect 1", "freeze"]
        rec.calls.clear()
        policy.tick(10)
        assert policy.tick(10)  # halved
        assert rec.calls == ["unfreeze", "collect 2", "freeze"]
    finally:
        policy.stop()


class Node:
    """An object in a reference cycle, for the real collector to find (or not)."""

    def __init__(self) -> None:
        self.me = self


def test_a_settle_frees_young_cycles_and_a_halving_frees_frozen_ones() -> None:
    """The design's trade, with CPython's real collector: settling visits only the young
    generations, so a cycle already in the oldest one is frozen with the population; the
    next halving of the population frees it."""
    policy = FreezePolicy(callbacks=[], set_young_threshold=lambda young: None, min_growth=10)
    old = Node()
    gc.collect()  # it survived a full collection: in the oldest generation now
    old_ref = weakref.ref(old)
    young_ref = weakref.ref(Node())  # garbage at once, still in the youngest generation
    del old
    try:
        policy.tick(100)
        assert policy.tick(100)
        assert young_ref() is None
        assert old_ref() is not None  # not visited: frozen
        gc.collect()
        assert old_ref() is not None  # CPython's own collections leave it too
        policy.tick(40)
        assert policy.tick(40)  # halved
        assert old_ref() is None
    finally:
        gc.unfreeze()
