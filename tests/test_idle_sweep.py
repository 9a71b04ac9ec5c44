"""The idle sweep visits every session once a sweep, a slice per loop turn (issue 16).

One pass over 10,000 sessions in a single loop callback held every message under way behind
it; these tests count the sessions each loop turn visits, and check that deadlines still hold
with thousands of sessions around.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import Clients

from imchat.protocol import ProtocolError
from imchat.server.registry import COUNT_SLICE
from imchat.server.sweep import SLICE, IdleSweep


class Turns:
    """Counts the event loop's turns: a callback that schedules itself runs once a turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        if not self._stopped:
            self.turn += 1
            self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True


class FakePeer:
    """A logged-in session that is never idle and records the loop turn of each visit."""

    closing = False
    credential = None
    addr = "fake"
    peer = "fake:0"
    nick = "fake"
    opened = float("-inf")

    def __init__(
        self,
        turns: Turns,
        visits: list[int],
        on_visit: Callable[[], None],
        counted: list[int],
    ) -> None:
        self.user = object()
        self._turns = turns
        self._visits = visits
        self._on_visit = on_visit
        self._counted = counted
        self.failed: list[ProtocolError] = []

    @property
    def owed(self) -> int:
        """Nothing; the turn of each count of it is recorded."""
        self._counted.append(self._turns.turn)
        return 0

    @property
    def last_rx(self) -> float:
        self._visits.append(self._turns.turn)
        self._on_visit()
        return asyncio.get_running_loop().time()  # always active

    def fail(self, error: ProtocolError) -> None:
        self.failed.append(error)

    def pause_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Crowd:
    """Fake sessions in a server's registry and what the sweep did with them."""

    def __init__(self, count: int) -> None:
        self.turns = Turns()
        #: The loop turn of each visit of the idle sweep, and of each count of unsent output.
        self.visits: list[int] = []
        self.counted: list[int] = []
        #: Set once a whole pass of the idle sweep has visited every fake.
        self.passed = asyncio.Event()
        self.fakes = [
            FakePeer(self.turns, self.visits, self._on_visit, self.counted) for _ in range(count)
        ]

    def _on_visit(self) -> None:
        if len(self.visits) >= len(self.fakes):
            self.passed.set()


@contextmanager
def fakes_in(server: Any, count: int) -> Iterator[Crowd]:
    """``count`` fake sessions in ``server``'s registry. The GC policy is kept from freezing
    the test process's heap for the crowd."""
    server.gc_policy.tick = lambda sessions: False
    crowd = Crowd(count)
    registry = server.hub.registry
    for fake in crowd.fakes:
        registry.add(fake)
    try:
        yield crowd
    finally:
        for fake in crowd.fakes:
            registry.remove(fake)
        crowd.turns.stop()


@pytest.mark.server_config(idle_timeout=0.5)
async def test_a_pass_visits_at_most_a_slice_per_loop_turn(server: Any) -> None:
    count = 3 * SLICE + 1
    with fakes_in(server, count) as crowd:
        await asyncio.wait_for(crowd.passed.wait(), 10)
        per_turn = collections.Counter(crowd.visits[:count])
    assert max(per_turn.values()) <= SLICE
    assert len(per_turn) >= 4  # 3 full slices and one more session: 4 turns at least
    assert not any(fake.failed for fake in crowd.fakes)


@pytest.mark.server_config(idle_timeout=0.5, max_output_total=1000)
async def test_the_sweeps_output_count_visits_a_slice_per_loop_turn(server: Any) -> None:
    """The estimate has reached half the bound: the sweep counts what every session owes
    (nothing here), a slice per loop turn, and the estimate comes down to it."""
    count = 2 * COUNT_SLICE + 1
    registry = server.hub.registry
    with fakes_in(server, count) as crowd:
        registry.output_estimate = 600
        while len(crowd.counted) < count:
            crowd.passed.clear()
            await asyncio.wait_for(crowd.passed.wait(), 10)  # a sweep later
        per_turn = collections.Counter(crowd.counted[:count])
    assert max(per_turn.values()) <= COUNT_SLICE
    assert len(per_turn) >= 3
    assert registry.output_estimate < 500  # brought down to what is owed: nothing
    assert registry.output_cuts == 0


@pytest.mark.server_config(idle_timeout=0.5)
async def test_an_idle_session_is_closed_in_time_among_thousands(
    server: Any, connect: Clients
) -> None:
    loop = asyncio.get_running_loop()
    with fakes_in(server, 10 * SLICE) as crowd:
        silent = await connect.raw()
        await silent.hello("silent")
        started = loop.time()
        frames = await silent.recv_until_eof(timeout=10)
        closed_after = loop.time() - started
        await asyncio.wait_for(crowd.passed.wait(), 10)
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["idle_timeout"]
    # The bound: the timeout, one sweep interval (0.125 s), the pass's 10 turns; generous
    # for a loaded machine, far below the 10 s a lost session would take to show.
    assert closed_after < 0.5 + 2.0
    assert not any(fake.failed for fake in crowd.fakes)


class Greeter:
    """A session for :class:`IdleSweep` alone: without hello, or idle, as told; counts the
    sweep's visits (each reads ``last_rx`` once, if it is not closed first)."""

    closing = False

    def __init__(self, *, user: bool, opened: float, last_rx: float) -> None:
        self.user = object() if user else None
        self.opened = opened
        self._last_rx = last_rx
        self.visits = 0
        self.failed: list[str] = []

    @property
    def last_rx(self) -> float:
        self.visits += 1
        return self._last_rx

    def fail(self, error: ProtocolError) -> None:
        self.failed.append(str(error))


def registry_of(*sessions: Greeter) -> Any:
    """What :class:`IdleSweep` reads of a registry; every session new, so watched."""
    return types.SimpleNamespace(sessions=set(sessions), watched=set(sessions))


async def test_a_pass_closes_late_greeters_and_idlers_across_slices() -> None:
    now = asyncio.get_running_loop().time()
    fine = [Greeter(user=True, opened=now, last_rx=now) for _ in range(7)]
    late = Greeter(user=False, opened=now - 20, last_rx=now)
    greeting = Greeter(user=False, opened=now, last_rx=now)
    idle = Greeter(user=True, opened=now - 200, last_rx=now - 100)
    sessions: list[Any] = [*fine[:3], late, *fine[3:5], greeting, *fine[5:], idle]
    registry = registry_of(*sessions)
    sweep = IdleSweep(registry, idle_timeout=90, hello_timeout=10, slice_size=3)
    greeters, earliest = await sweep.visit(sessions)
    assert greeters == 2  # the two without a user, closed or not
    assert earliest == now  # of those left open
    assert late.failed == ["idle_timeout: no hello within 10 s"]
    assert idle.failed == ["idle_timeout: idle for 90 s"]
    assert greeting.failed == [] and not any(f.failed for f in fine)
    # The logged-in ones are settled: only the one still greeting (and the two closed, until
    # their connections end) are left to visit every tick.
    assert registry.watched == {late, greeting, idle}


async def test_a_tick_visits_only_the_watched_until_an_idle_deadline_is_due() -> None:
    """10,000 idle users cost a tick nothing until the earliest of them may be idle."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    crowd = [Greeter(user=True, opened=now, last_rx=now) for _ in range(50)]
    oldest = Greeter(user=True, opened=now, last_rx=now - 60 + 0.05)  # idle in 50 ms
    registry = registry_of(*crowd, oldest)
    sweep = IdleSweep(registry, idle_timeout=60, hello_timeout=10)
    assert await sweep.tick() == 51  # the first tick is a full pass
    assert [g.visits for g in [*crowd, oldest]] == [1] * 51
    assert not registry.watched
    assert sweep.next_full_pass == oldest._last_rx + 60

    newcomer = Greeter(user=False, opened=loop.time(), last_rx=loop.time())
    registry.sessions.add(newcomer)
    registry.watched.add(newcomer)
    assert await sweep.tick() == 51  # the newcomer has no user yet
    assert newcomer.visits == 1 and all(g.visits == 1 for g in [*crowd, oldest])

    while loop.time() < sweep.next_full_pass:
        await asyncio.sleep(sweep.next_full_pass - loop.time())
    await sweep.tick()
    assert oldest.failed == ["idle_timeout: idle for 60 s"]
    assert all(g.visits == 2 for g in crowd) and newcomer.visits == 2


async def test_the_watched_set_shrinks_once_a_crowd_has_settled() -> None:
    """A set never gives back the table its peak needed: 10,000 arrivals would leave the
    watched set holding half a megabyte for nothing once they settled."""
    now = asyncio.get_running_loop().time()
    crowd = [Greeter(user=True, opened=now, last_rx=now) for _ in range(10_000)]
    registry = registry_of(*crowd)
    peak = sys.getsizeof(registry.watched)
    await IdleSweep(registry, idle_timeout=90, hello_timeout=10).tick()
    assert not registry.watched
    assert sys.getsizeof(registry.watched) * 100 < peak


async def test_without_an_idle_timeout_a_tick_visits_only_the_watched() -> None:
    now = asyncio.get_running_loop().time()
    crowd = [Greeter(user=True, opened=now, last_rx=now - 1000) for _ in range(5)]
    registry = registry_of(*crowd)
    sweep = IdleSweep(registry, idle_timeout=0, hello_timeout=10)
    await sweep.tick()
    await sweep.tick()
    assert [g.visits for g in crowd] == [1] * 5 and not any(g.failed for g in crowd)


@pytest.mark.server_config(idle_timeout=0.5)
async def test_a_session_is_watched_while_it_holds_a_bucket_and_closed_when_idle_after(
    server: Any, connect: Clients
) -> None:
    """A real session: watched from its connection until it has a user and no bucket, again
    once a request makes it one, and still closed when idle though nothing watches it."""
    registry = server.hub.registry
    let_go = asyncio.Event()

    class Watched(set[Any]):
        def discard(self, item: Any) -> None:
            if item in self and getattr(item, "nick", None) == "talker":
                let_go.set()
            super().discard(item)

    registry.watched = Watched(registry.watched)
    talker = await connect.raw()
    await talker.hello("talker")
    (session,) = [s for s in registry.sessions if s.nick == "talker"]
    await asyncio.wait_for(let_go.wait(), 10)  # a tick found it logged in and rested
    assert session not in registry.watched
    let_go.clear()
    await talker.request({"type": "join", "room": "lobby", "id": "j"})
    assert session in registry.watched  # its join took a token: a bucket to let go of
    await asyncio.wait_for(let_go.wait(), 10)
    frames = await talker.recv_until_eof(timeout=10)
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["idle_timeout"]
