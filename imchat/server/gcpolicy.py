"""Garbage collection for a server whose heap is mostly long-lived sessions.

CPython's full (generation 2) collection visits every tracked object, and the event loop
stands still meanwhile. A session is about 14 tracked objects (the session, its transport,
user, lists, decoder, socket...), so with 10,000 idle sessions a full pass took 110-230 ms on
the benchmark VM (``benchmarks/gc_pauses.py``), and it comes back each time a quarter as many
objects again have survived into generation 2: a 100 ms stall in the latency tail of every
message under way.

Sessions are long-lived and free themselves by reference counting when they close (no cycle
is left behind: ``tests/test_gc_policy.py`` checks it), so there is no point in visiting them
again and again. :class:`FreezePolicy` moves the population into CPython's permanent
generation (``gc.freeze()``) once it has grown and settled, after collecting only the young
generations: what a young collection visits anyway, ~6 ms at 10,000 sessions where a full
collection of the whole heap took 90-115 ms and, measured in every storm tried, found nothing
(``benchmarks/README.md``, round 8). Cyclic garbage among frozen objects is not collected, so
when the frozen population has halved (most of it gone) the policy unfreezes, collects the
whole heap once and freezes again: the one full pass, paid when it frees something.

The youngest generation is collected every :data:`YOUNG_THRESHOLD` net allocations instead of
CPython's 700: a message under way allocates a dozen tracked objects (futures, requests,
frames) that reference counting frees anyway, and at 700 the young collections cost ~3 % of
the event loop's instructions per message (``benchmarks/callgrind_say.py``).

While a crowd arrives (a connect storm: 10,000 users at once after a restart) the population
has not settled, and CPython's own rule ran a full collection each time a quarter as much
again had survived: 12 full collections visiting every session arrived so far, 0.7-2 s of
server CPU in a storm of 3-4 s. So while the population grows by more than the policy would
freeze for, it freezes right after each of CPython's own full collections (``gc.callbacks``):
what survived one is never visited by the next (``gc.freeze()`` only moves lists), and a
full collection has just freed every cycle, so no garbage is frozen with it (after a
younger collection, cycles left in the older generations would be). Once the population has
settled (or after :data:`MAX_PARTIAL_TICKS` ticks of growth) the rest is frozen as
above. The population counted is sessions that said ``hello``: in a storm every connection
is accepted within a second, long before most are served.

In an all-at-once storm the sweep's ticks come too late to see the growth (the loop is busy
for seconds), and CPython runs no full collection at all: the cost is its middle collections,
each visiting what survived ten young ones, 350-430 ms of a 3-4 s storm of 10,000 users
(round 9). So the policy also reads the population at each of CPython's middle collections:
when it grew by ``min_growth`` since the one before (:attr:`FreezePolicy.arriving`), every
collection until the next middle one is followed by a freeze, and the middle collections
visit only what arrived since the last young one (90 ms in the same storm). The price is the
one above, earlier: a cycle that was alive at a young collection while a crowd arrived and
became garbage later is freed at the next halving. A full collection of everything at the
settle after such storms found nothing (0 objects, round 9), as after round 8's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Sessions the population must have grown by since the last freeze before another one.
MIN_GROWTH = 256
#: ... and at least this fraction of what was frozen (so a freeze's collection, whose cost
#: grows with the heap, is paid once per 25 % of growth: the cadence of CPython's own rule).
GROWTH_FRACTION = 0.25
#: A population is settled when it moved by at most this fraction since the last tick.
SETTLED_FRACTION = 0.01
#: Net allocations of tracked objects between young collections (CPython: 700; 3.13: 2,000).
#: What waits that long is at most a few MiB of short-lived objects.
YOUNG_THRESHOLD = 10_000
#: Ticks a population may keep growing, partly frozen, before the rest is frozen anyway.
MAX_PARTIAL_TICKS = 30

#: CPython's young generations (0 and 1): ``gc.collect(YOUNG)`` visits only them.
YOUNG = 1
#: CPython's oldest generation: a collection of it leaves no cyclic garbage behind.
FULL = 2

GcCallback = Callable[[str, dict[str, Any]], None]


class FreezePolicy:
    """Decides, once per sweep tick, whether to collect and freeze the heap."""

    def __init__(
        self,
        *,
        collect: Callable[[int], int] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        set_young_threshold: Callable[[int], None] | None = None,
        min_growth: int = MIN_GROWTH,
        callbacks: list[GcCallback] | None = None,
    ) -> None:
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._set_young_threshold = set_young_threshold or _set_young_threshold
        self.min_growth = min_growth
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        #: The population is growing by more than a freeze needs: each of CPython's own
        #: full collections is followed by a freeze (see :meth:`after_collection`).
        self.growing = False
        #: Ticks since a freeze during growth left the heap partly frozen (None: not so).
        self._partial_ticks: int | None = None
        #: Sessions at the last freeze (0: nothing of theirs is frozen).
        self.frozen_sessions = 0
        self._last = 0
        #: Freezes done (for tests and logs).
        self.freezes = 0
        #: The sessions with a user now (set at :meth:`start`), for :attr:`arriving`.
        self._population: Callable[[], int] | None = None
        self._at_middle = 0
        #: The population grew by ``min_growth`` or more between CPython's last two middle
        #: collections: each young collection is followed by a freeze (see the module).
        self.arriving = False

    def start(self, population: Callable[[], int] | None = None) -> None:
        """At server start: what the imports and setup left is permanent; freeze it.

        ``population``: the number of sessions with a user, read at CPython's middle
        collections to tell a crowd arriving (:attr:`arriving`)."""
        self._population = population
        self._at_middle = population() if population is not None else 0
        self._collect(FULL)
        self._freeze()
        self._set_young_threshold(YOUNG_THRESHOLD)
        self._callbacks.append(self.after_collection)

    def stop(self) -> None:
        """At server stop: CPython's collections are left alone again."""
        if self.after_collection in self._callbacks:
            self._callbacks.remove(self.after_collection)
        self.growing = False

    def after_collection(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry: while growing, freeze what a full collection left; while
        a crowd arrives, what each young collection left."""
        if phase != "stop":
            return
        generation = info.get("generation", 0)
        if generation == FULL:
            if self.growing:
                self._freeze()
                if self._partial_ticks is None:
                    self._partial_ticks = 0
            return
        if generation == YOUNG and self._population is not None:
            now = self._population()
            self.arriving = now - self._at_middle >= self.min_growth
            self._at_middle = now
        if self.arriving:
            self._freeze()

    def tick(self, sessions: int) -> bool:
        """Called every sweep with the number of sessions; True if it (re)froze the heap."""
        last, self._last = self._last, sessions
        settled = abs(sessions - last) <= max(1, int(sessions * SETTLED_FRACTION))
        frozen = self.frozen_sessions
        grown = sessions - frozen >= max(self.min_growth, int(frozen * GROWTH_FRACTION))
        shrunk = frozen > 0 and sessions < frozen // 2
        partial = self._partial_ticks
        if partial is not None:
            partial = self._partial_ticks = partial + 1
        self.growing = grown and not settled
        if not settled and (partial is None or partial < MAX_PARTIAL_TICKS):
            return False
        if not (grown or shrunk or partial is not None):
            return False
        start = time.perf_counter()
        # A full collection of ours is never followed by a freeze of after_collection's:
        # the population has shrunk, so it is not growing.
        if shrunk:  # most of the frozen set is gone: free the cycles it may have left
            self._unfreeze()
            self._collect(FULL)
        else:
            self._collect(YOUNG)
        self._freeze()
        self.frozen_sessions = sessions
        self._partial_ticks = None
        self.freezes += 1
        log.info(
            "gc: froze the heap at %d sessions (%s collection %.0f ms)",
            sessions,
            "full" if shrunk else "young",
            (time.perf_counter() - start) * 1000,
        )
        return True


def _set_young_threshold(young: int) -> None:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
