"""``/metrics`` in Prometheus's text format, from the server's own counters.

The core counts in :data:`imchat.server.stats.STATS` (plain integers); this collector turns
them into metric families at scrape time, so nothing is done per message for Prometheus.
Two probes run while the HTTP face is up: event-loop lag (how late a 0.25 s timer fires) and,
with the Redis backend, the round trip of a PING. Per-second figures are PromQL's
``rate(imchat_messages_total[1m])``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from imchat.server.stats import STATS, Histogram

if TYPE_CHECKING:
    from .app import HttpFrontend

Ping = Callable[[], Awaitable[Any]]
#: Seconds between event-loop lag samples and between Redis pings.
LAG_INTERVAL = 0.25
REDIS_INTERVAL = 5.0
#: Session kinds always reported, 0 when there are none.
PROTOCOLS = ("native", "websocket")


class Probes:
    """Event-loop lag and Redis round trip, sampled in the background."""

    def __init__(self) -> None:
        self.loop_lag = Histogram()
        self.last_lag = 0.0
        self.redis_rtt = Histogram()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self, redis_ping: Ping | None) -> None:
        self._tasks.append(asyncio.create_task(self._sample_lag()))
        if redis_ping is not None:
            self._tasks.append(asyncio.create_task(self._sample_redis(redis_ping)))

    async def stop(self) -> None:
        """Cancel the probes, again until they are done: redis-py can swallow a cancellation
        that arrives during a command (the loops also end on ``_stopping``)."""
        self._stopping = True
        tasks = self._tasks
        while any(not task.done() for task in tasks):
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.1)
        tasks.clear()

    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.last_lag = max(0.0, loop.time() - started - LAG_INTERVAL)
            self.loop_lag.observe(self.last_lag)

    async def _sample_redis(self, ping: Ping) -> None:
        while not self._stopping:
            started = time.perf_counter()
            try:
                await ping()
            except Exception:  # an outage shows on /healthz; the histogram skips it
                pass
            else:
                self.redis_rtt.observe(time.perf_counter() - started)
            await asyncio.sleep(REDIS_INTERVAL)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=histogram.cumulative(), sum_value=histogram.total
    )


class ServerCollector(Collector):
    def __init__(self, front: HttpFrontend) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        front = self.front
        sessions = GaugeMetricFamily(
            "imchat_sessions", "Open sessions by protocol.", labels=["protocol"]
        )
        counts = Counter(getattr(s, "protocol", "native") for s in front.hub.sessions)
        for protocol in sorted(set(PROTOCOLS) | set(counts)):
            sessions.add_metric([protocol], counts.get(protocol, 0))
        yield sessions
        yield CounterMetricFamily(
            "imchat_messages", "Messages stored (room, DM, announcement).", value=STATS.messages
        )
        yield CounterMetricFamily(
            "imchat_deliveries", "Frames written to clients.", value=STATS.deliveries
        )
        yield CounterMetricFamily(
            "imchat_slow_consumer_cuts",
            "Sessions cut off for not reading (slow_consumer).",
            value=STATS.slow_consumers,
        )
        yield CounterMetricFamily(
            "imchat_rate_limited_requests",
            "Requests refused with rate_limited.",
            value=STATS.rate_limited,
        )
        yield _histogram(
            "imchat_store_commit_seconds",
            "Time to commit a batch of writes (SQLite) or run a pipeline (Redis).",
            STATS.commit_seconds,
        )
        probes = front.probes
        if front.redis_ping is not None:
            yield _histogram(
                "imchat_redis_roundtrip_seconds", "Round trip of a Redis PING.", probes.redis_rtt
            )
        yield _histogram(
            "imchat_event_loop_lag_seconds",
            "How late a periodic timer fires on the server's event loop.",
            probes.loop_lag,
        )
        requests = CounterMetricFamily(
            "imchat_http_requests",
            "HTTP requests by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(front.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
