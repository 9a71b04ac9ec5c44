"""Counters the server keeps for operators, read by ``/metrics`` when someone scrapes it.

Plain integers and fixed-bucket histograms: the hot paths pay an addition, and the server core
does not depend on prometheus-client (``imchat.server.http.metrics`` exposes these). One set
per process: every server in it adds to the same counters.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) for latencies between a tenth of a millisecond and a few seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Histogram:
    """Counts per bucket (not cumulative), their sum and count; observe() is O(log buckets)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        #: One count per bound, and a last one for values above every bound.
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at or below it), ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Stats:
    """What the server counts. Integers only grow (Prometheus counters)."""

    __slots__ = (
        "commit_seconds",
        "deliveries",
        "messages",
        "rate_limited",
        "slow_consumers",
    )

    def __init__(self) -> None:
        #: Messages stored (room messages, DMs, announcements), duplicates of a cid excluded.
        self.messages = 0
        #: Frames written to clients (events and replies) by every kind of session.
        self.deliveries = 0
        #: Sessions cut off with ``slow_consumer``.
        self.slow_consumers = 0
        #: Requests refused with ``rate_limited`` by a message or read bucket.
        self.rate_limited = 0
        #: Time from a batch of writes being started to its commit (SQLite) or to Redis's
        #: answer to its pipeline (Redis).
        self.commit_seconds = Histogram()


STATS = Stats()
