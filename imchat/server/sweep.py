"""The idle sweep: which sessions it visits at each tick, a slice per loop turn.

Once a second the server closes the idle sessions and those without ``hello`` in time, lets
full rate-limit buckets go (idle memory) and counts the logged-in ones for the
garbage-collection policy.

Visiting every session every second cost an idle server 6.5 ms of CPU a second at 16,667
idle users (``benchmarks/README.md``, round 11), in bursts: where several servers share a
core (the cluster's benchmark, or a small machine), each burst held the others' messages,
and the p99 of a room's messages grew with idle users in *other* rooms. Most of those
visits found nothing to do: an idle, logged-in session that holds no bucket only needs
looking at when its idle deadline is due. So a tick visits two kinds of sessions:

- the *watched* ones (:attr:`imchat.server.registry.Registry.watched`): every session until
  it has a user and holds nothing :meth:`imchat.server.session.Session.rest` lets go of.
  A new connection is watched (its hello deadline) and so is a session that makes a bucket;
  a visit that finds it logged in and rested stops watching it. These are the recent
  arrivals and the users active lately: few, whatever the crowd.
- every session, but only when the earliest idle deadline is due: a full pass notes the
  earliest ``last_rx`` it saw, and ``last_rx`` only moves forward, so no session can become
  idle before that time plus the timeout (a session that arrives after the pass's start has
  a ``last_rx`` after it). The next full pass is then, at the latest, one idle timeout after
  this one, and as often as once a tick only when a session is close to its deadline.

A pass visits at most :data:`SLICE` sessions per loop turn and yields in between: the
loop's other callbacks (reads, writes, broadcasts) run between two slices. It works on a
snapshot taken at its start (a session may close meanwhile: closing one twice is harmless),
and each slice reads the clock afresh, so a deadline is judged when its session is visited.
A session is still closed within one tick (plus the pass's few loop turns) of its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from imchat.protocol import ErrorCode, ProtocolError

from .peer import Peer
from .registry import Registry
from .session import Session

#: Sessions visited per loop turn: about 0.1 ms of the loop here (0.2 µs each), below the
#: cost of one broadcast to a room of 100, so no message waits noticeably behind a slice.
SLICE = 500
#: The watched set is copied (its table shrunk) once a tick that visited at least
#: SHRINK_FROM sessions leaves fewer than 1/SHRINK_AT of them watched.
SHRINK_FROM = 1024
SHRINK_AT = 8


class IdleSweep:
    """What one server's sweep visits, tick after tick."""

    def __init__(
        self,
        registry: Registry,
        *,
        idle_timeout: float,
        hello_timeout: float,
        slice_size: int = SLICE,
    ) -> None:
        self.registry = registry
        self.idle_timeout = idle_timeout
        self.hello_timeout = hello_timeout
        self.slice_size = slice_size
        #: Loop time from which an idle deadline may be due: the next full pass.
        self.next_full_pass = float("-inf")

    async def tick(self) -> int:
        """Visit what needs it now; the number of sessions that have a user."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        full = self.idle_timeout > 0 and start >= self.next_full_pass
        registry = self.registry
        visited = list(registry.sessions if full else registry.watched)
        greeting, earliest = await self.visit(visited)
        if full:
            self.next_full_pass = min(earliest, start) + self.idle_timeout
        if len(visited) >= SHRINK_FROM and len(registry.watched) * SHRINK_AT < len(visited):
            # A set keeps the table its peak needed (a crowd's arrival): a copy is sized to
            # what is left (0.5-1 MiB less after 10,000 arrivals).
            registry.watched = set(registry.watched)
        # Every session without a user is watched: the watched pass counted them all.
        return len(registry.sessions) - greeting

    async def visit(self, sessions: Sequence[Peer]) -> tuple[int, float]:
        """Close the idle sessions and those without hello in time, rest the others and stop
        watching the settled ones; the number without a user and the earliest ``last_rx`` of
        those left open. A timeout of 0 is off. Yields after every ``slice_size`` sessions."""
        loop = asyncio.get_running_loop()
        idle_timeout, hello_timeout = self.idle_timeout, self.hello_timeout
        watched = self.registry.watched
        greeting = 0
        earliest = float("inf")
        for start in range(0, len(sessions), self.slice_size):
            if start:
                await asyncio.sleep(0)
            now = loop.time()
            for session in sessions[start : start + self.slice_size]:
                if session.user is None:
                    greeting += 1
                    if hello_timeout > 0 and session.opened < now - hello_timeout:
                        message = f"no hello within {hello_timeout:g} s"
                        session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))
                        continue
                last_rx = session.last_rx
                if idle_timeout > 0 and last_rx < now - idle_timeout:
                    message = f"idle for {idle_timeout:g} s"
                    session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))
                    continue
                if last_rx < earliest:
                    earliest = last_rx
                rested = session.rest() if isinstance(session, Session) else True
                if rested and session.user is not None:
                    watched.discard(session)
        return greeting, earliest
