"""The connections a server holds: who is connected, from where, what they owe, what runs.

The registry counts connections per address (``max_connections_per_ip``), batches writes
(a session with frames queued is marked dirty, and one flush per loop turn writes each once),
and tracks the tasks the server must wait for at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from imchat.protocol import ErrorCode, ProtocolError

from .addrcounts import AddressCounts
from .peer import Peer
from .stats import STATS

log = logging.getLogger(__name__)

#: A flush that took longer than this (seconds) makes the next one wait as long, up to
#: FLUSH_REST_MAX: enough to batch a burst, short enough not to show in latency...
FLUSH_REST_AFTER = 0.002
FLUSH_REST_MAX = 0.005
#: ... if it carried more than this many frames per session: the senders are ahead of the
#: writes (a window of messages in flight), so more will be ready to share the next ones.
FLUSH_REST_FRAMES = 2
#: Memory a byte of unsent output costs, counted conservatively: transport buffers
#: over-allocate, a large reply is copied while it is encoded and written, and the allocator
#: keeps freed blocks a while. Counting each byte once, 60 guests holding unread 7.7 MiB
#: replies grew the RSS by 293 MiB for a 256 MiB bound (benchmarks/output_memory.py), too
#: close to the bound's 64 MiB slack on a loaded machine; counted twice, by 158 MiB.
MEMORY_PER_BYTE_OWED = 2
#: Seconds between exact counts of the output owed while the bound is reached.
COUNT_INTERVAL = 0.05
#: Connections the sweep's count visits per loop turn (see :meth:`Registry.sweep_output`).
COUNT_SLICE = 500


class Owing(Protocol):
    """A connection that can say how many bytes it owes its client (written or queued)."""

    @property
    def owed(self) -> int: ...

    def fail(self, error: ProtocolError) -> None: ...

    def abort(self) -> None: ...

    def wake(self) -> None:
        """Handle the requests held back while the server was over its output bound."""


def flush_each(sessions: list[Peer]) -> None:
    """Flush each session (the registry's default: any :class:`Peer`)."""
    for session in sessions:
        session.flush()


class Registry:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_output_total: int = 0) -> None:
        self.loop = loop
        #: Unsent output all connections together may hold before the largest owers are cut.
        self.max_output_total = max_output_total
        #: Bytes handed to transports since the last exact count: what is owed now is at most
        #: the last count plus this, so the exact (O(connections)) count is needed only when
        #: this estimate passes the bound, and once per sweep. Writers add to it (see
        #: :meth:`wrote`; the native session does the same inline, one call less per write).
        self.output_estimate = 0
        #: What the estimate may reach before a write must count exactly at once:
        #: ``max_output_total``, or infinity (no bound, or a count under way).
        self.output_trigger: float = max_output_total or math.inf
        #: Connections cut to keep within ``max_output_total`` (for logs and benchmarks).
        self.output_cuts = 0
        #: Memory of cut connections not yet released (an aborted transport lets go of its
        #: buffer only when it is closed, a loop turn or more later).
        self._releasing: dict[Owing, int] = {}
        #: Connections with requests held back until the output fits the bound again.
        self._waiting: set[Owing] = set()
        self._last_count = 0.0
        #: Exact counts made (a count in slices gives way to one made meanwhile).
        self._counts = 0
        self.sessions: set[Peer] = set()
        #: What the idle sweep visits every tick (:mod:`.sweep`): the sessions without a user
        #: yet and those holding a rate-limit bucket; the rest only when a deadline is due.
        self.watched: set[Peer] = set()
        #: Open connections per client address, for ``max_connections_per_ip``.
        self.addresses = AddressCounts()
        self.connections_per_addr = self.addresses.counts
        #: Sessions with frames queued since their last flush, flushed at the turn's end. A
        #: session may append itself while the list is not empty (a flush is scheduled);
        #: the first one of a turn calls :meth:`mark_dirty`, which schedules it.
        self.dirty: list[Peer] = []
        #: Writes a flush's dirty sessions: each one's ``flush()``, unless the server installs
        #: its sessions' inline loop (``imchat.server.session.flush_all``: no call per write).
        self.flush_dirty: Callable[[list[Peer]], None] = flush_each
        self._rest_until = 0.0
        #: ``STATS.deliveries`` after the last flush: frames since then are the next one's.
        self._delivered = STATS.deliveries
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

    # -- connections -----------------------------------------------------------------------

    def add(self, session: Peer, *, counted: bool = False) -> int:
        """Register a new connection; the number of connections from its address now.

        ``counted``: the listener counted it already, at accept (``addresses.admit``).
        """
        self.sessions.add(session)
        self.watched.add(session)
        self._no_sessions.clear()
        if counted:
            return self.connections_per_addr.get(session.addr, 0)
        return self.addresses.add(session.addr)

    def remove(self, session: Peer) -> None:
        if session in self.sessions:
            self.addresses.release(session.addr)
        self.sessions.discard(session)
        self.watched.discard(session)
        if not self.sessions:
            self._no_sessions.set()

    # -- the bound on unsent output ----------------------------------------------------------

    def untrack_output(self, session: Owing) -> None:
        """The connection is gone: it holds no output and waits for nothing any more."""
        self._waiting.discard(session)
        if self._releasing.pop(session, None) is not None and not self._releasing:
            self._wake_waiting()

    def saturated(self) -> bool:
        """True while the output held (and being released) is at the bound: requests that
        would add to it wait (see :meth:`wait_for_room`). Counted afresh at most every 50 ms."""
        limit = self.max_output_total
        if not limit:
            return False
        held = self.output_estimate + sum(self._releasing.values())
        if held <= limit:
            return False
        now = self.loop.time()
        if now - self._last_count >= COUNT_INTERVAL:
            self._last_count = now
            self.enforce_output_bound()
            held = self.output_estimate + sum(self._releasing.values())
        return held > limit

    def wait_for_room(self, session: Owing) -> None:
        """Hold ``session``'s requests until the output fits the bound; then :meth:`Owing.wake`."""
        self._waiting.add(session)

    def _wake_waiting(self) -> None:
        if self._waiting and not self.saturated():
            waiting, self._waiting = self._waiting, set()
            for session in waiting:
                session.wake()

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` were handed to a transport: count them until the next exact count."""
        estimate = self.output_estimate = self.output_estimate + nbytes * MEMORY_PER_BYTE_OWED
        if estimate > self.output_trigger:
            # At once, not at the next loop turn: sixty sessions' requests can all be answered
            # within one turn (sixty 7.7 MiB replies before a deferred count ran).
            self.enforce_output_bound()

    async def sweep_output(self) -> None:
        """The sweep's exact count (once a second), only when it can matter: the estimate has
        reached half the bound, or requests wait for room. Below that a count changes nothing
        (the estimate only ever overstates), and counting every session is O(sessions): ~25 ms
        of the event loop each second with 10,000 idle users, the p99 of every room's messages
        (``benchmarks/report.py``, "flat in idle users elsewhere").

        With requests waiting it counts (and cuts) at once, as a write over the bound does.
        Otherwise it only brings the estimate down to what is owed, so it counts in slices of
        :data:`COUNT_SLICE` connections, yielding to the loop in between (at 10,000 sessions one
        count in one callback held the loop 7-11 ms, see :meth:`_recount`).
        """
        limit = self.max_output_total
        if self._waiting:
            self.enforce_output_bound()
        elif limit and self.output_estimate * 2 >= limit:
            await self._recount(limit)

    async def _recount(self, limit: int) -> None:
        """Count what every connection owes, a slice per loop turn; then the estimate is that
        count plus what was written meanwhile.

        Still an upper bound: a connection owes at most what it owed when visited plus what was
        written since (to it or anyone: the estimate's growth during the count). Connections
        that arrive meanwhile owe only what was written to them. An exact count that runs
        meanwhile (a write over the bound) makes this one moot: it is left unfinished.
        """
        counts, before = self._counts, self.output_estimate
        releasing = self._releasing
        sessions = list(self.sessions)
        total = 0
        for start in range(0, len(sessions), COUNT_SLICE):
            if start:
                await asyncio.sleep(0)
                if self._counts != counts:
                    return
            for peer in sessions[start : start + COUNT_SLICE]:
                amount = getattr(peer, "owed", None)
                if amount is not None and cast(Owing, peer) not in releasing:
                    total += amount * MEMORY_PER_BYTE_OWED
        estimate = total + self.output_estimate - before
        if estimate > limit:
            self.enforce_output_bound()  # over the bound after all: count and cut at once
        else:
            self.output_estimate = estimate
            self._wake_waiting()  # requests that began to wait meanwhile

    def enforce_output_bound(self) -> int:
        """Count what every connection owes; cut the largest owers while over the bound.

        Returns the memory the output takes afterwards (bytes owed x MEMORY_PER_BYTE_OWED). A
        cut connection is aborted at once: its backlog (unread by definition) is dropped with it
        instead of lingering for a close grace.
        """
        trigger, self.output_trigger = self.output_trigger, math.inf
        try:
            return self._enforce()
        finally:
            self.output_trigger = trigger

    def _enforce(self) -> int:
        # Every connection that can say what it owes (the WebSocket adapter bounds its own),
        # bar those already cut: their memory is counted in _releasing until they are gone.
        # No set of its own: at 10,000 sessions a second set cost 50 bytes per connection.
        self._counts += 1
        releasing = self._releasing
        owed: list[tuple[int, Owing]] = []
        for peer in self.sessions:
            amount = getattr(peer, "owed", None)
            ower = cast(Owing, peer)
            if amount is not None and ower not in releasing:
                owed.append((amount * MEMORY_PER_BYTE_OWED, ower))
        total = sum(amount for amount, _ in owed)
        limit = self.max_output_total
        if limit and total > limit:
            owed.sort(key=lambda pair: pair[0], reverse=True)
            error = ProtocolError(
                ErrorCode.SLOW_CONSUMER, "the server holds too much unsent output; read faster"
            )
            cut = 0
            for amount, session in owed:
                if total <= limit or amount == 0:
                    break
                session.fail(error)
                session.abort()
                self._releasing[session] = amount
                total -= amount
                cut += 1
            self.output_cuts += cut
            log.warning(
                "unsent output over --max-output-total (%d bytes): cut the %d largest owers",
                limit,
                cut,
            )
        self.output_estimate = total
        self._wake_waiting()
        return total

    async def all_closed(self) -> None:
        await self._no_sessions.wait()

    # -- output ----------------------------------------------------------------------------

    def mark_dirty(self, session: Peer) -> None:
        """The session queued its first frame since its last flush: flush it soon."""
        if not self.dirty:
            rest = self._rest_until - self.loop.time()
            if rest > 0:
                self.loop.call_later(rest, self._flush)
            else:
                self.loop.call_soon(self._flush)
        self.dirty.append(session)

    def _flush(self) -> None:
        """Write what every session owes, one write per session.

        After a flush that took a while (one write per recipient is the dominant cost of a
        broadcast) and carried several frames per session, the next one waits as long again,
        up to 5 ms: the senders are ahead of the writes (a flat-out sender's window), so
        events arriving meanwhile pile up and leave in fewer, larger writes. One frame per
        session is a message at a time: the next one is not due yet, and resting would only
        hold it back (paced traffic near a core's capacity waited twice as long).
        """
        start = self.loop.time()
        dirty, self.dirty = self.dirty, []
        self.flush_dirty(dirty)
        end = self.loop.time()
        spent = end - start
        delivered = STATS.deliveries
        frames, self._delivered = delivered - self._delivered, delivered
        ahead = frames > FLUSH_REST_FRAMES * len(dirty)
        self._rest_until = (
            end + min(spent, FLUSH_REST_MAX) if spent > FLUSH_REST_AFTER and ahead else 0.0
        )

    # -- tasks -----------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a task the server waits for at shutdown (request handling, leaving)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def drain_tasks(self, timeout: float) -> None:
        """Wait for request handling to finish; cancel what is still stuck after ``timeout``."""
        deadline = self.loop.time() + timeout
        while self._tasks:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                log.warning("cancelling %d requests still running at shutdown", len(self._tasks))
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
