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
generation (``gc.freeze()``) once it has grown and settled: one full collection at that moment
(the one that would have come anyway) and none of those objects visited after it. Cyclic
garbage among frozen objects is never collected, so when the frozen population has halved
(most of it gone), the policy unfreezes, collects and freezes again.

The youngest generation is collected every :data:`YOUNG_THRESHOLD` net allocations instead of
CPython's 700: a message under way allocates a dozen tracked objects (futures, requests,
frames) that reference counting frees anyway, and at 700 the young collections cost ~3 % of
the event loop's instructions per message (``benchmarks/callgrind_say.py``).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

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


class FreezePolicy:
    """Decides, once per sweep tick, whether to collect and freeze the heap."""

    def __init__(
        self,
        *,
        collect: Callable[[], int] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        set_young_threshold: Callable[[int], None] | None = None,
        min_growth: int = MIN_GROWTH,
    ) -> None:
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._set_young_threshold = set_young_threshold or _set_young_threshold
        self.min_growth = min_growth
        #: Sessions at the last freeze (0: nothing of theirs is frozen).
        self.frozen_sessions = 0
        self._last = 0
        #: Freezes done (for tests and logs).
        self.freezes = 0

    def start(self) -> None:
        """At server start: what the imports and setup left is permanent; freeze it."""
        self._collect()
        self._freeze()
        self._set_young_threshold(YOUNG_THRESHOLD)

    def tick(self, sessions: int) -> bool:
        """Called every sweep with the number of sessions; True if it (re)froze the heap."""
        last, self._last = self._last, sessions
        settled = abs(sessions - last) <= max(1, int(sessions * SETTLED_FRACTION))
        if not settled:
            return False
        frozen = self.frozen_sessions
        grown = sessions - frozen >= max(self.min_growth, int(frozen * GROWTH_FRACTION))
        shrunk = frozen > 0 and sessions < frozen // 2
        if not (grown or shrunk):
            return False
        start = time.perf_counter()
        # Unfrozen first, so cyclic garbage among what was frozen is collected too.
        self._unfreeze()
        self._collect()
        self._freeze()
        self.frozen_sessions = sessions
        self.freezes += 1
        log.info(
            "gc: froze the heap at %d sessions (collection %.0f ms)",
            sessions,
            (time.perf_counter() - start) * 1000,
        )
        return True


def _set_young_threshold(young: int) -> None:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
