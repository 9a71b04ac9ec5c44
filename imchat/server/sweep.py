"""The idle sweep's pass over every session, a slice per loop turn.

Once a second the server looks at every session: closes the idle ones and those without
``hello`` in time, lets full rate-limit buckets go (idle memory) and counts the logged-in
ones for the garbage-collection policy. In one loop callback that pass held the event loop
for 2-10 ms at 10,000 idle sessions (more while a broadcast keeps the caches cold), and
every message under way waited behind it: the p99 of a room's messages grew with idle users
in *other* rooms (``benchmarks/README.md``, issue 16, "flat in idle users elsewhere").

So the pass visits at most :data:`SLICE` sessions per loop turn and yields in between: the
loop's other callbacks (reads, writes, broadcasts) run between two slices. The pass works on
a snapshot of the session set taken at its start (a session may close meanwhile: closing one
twice is harmless, and one that arrived after the snapshot is seen by the next pass), and
each slice reads the clock afresh, so a deadline is judged when its session is visited.

A session is still closed within one sweep interval (plus the pass's few loop turns) of its
deadline: the pass takes ``sessions / SLICE`` turns, 20 at 10,000 sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from imchat.protocol import ErrorCode, ProtocolError

from .peer import Peer
from .session import Session

#: Sessions visited per loop turn: about 0.1 ms of the loop here (0.2 µs each), below the
#: cost of one broadcast to a room of 100, so no message waits noticeably behind a slice.
SLICE = 500


async def sweep_sessions(
    sessions: Sequence[Peer],
    *,
    idle_timeout: float,
    hello_timeout: float,
    slice_size: int = SLICE,
) -> int:
    """Close the idle sessions of ``sessions`` and those without hello in time, and rest the
    others; the number of sessions that have a user (for the GC policy). A timeout of 0 is
    off. Yields to the loop after every ``slice_size`` sessions."""
    loop = asyncio.get_running_loop()
    greeting = 0
    for start in range(0, len(sessions), slice_size):
        if start:
            await asyncio.sleep(0)
        now = loop.time()
        for session in sessions[start : start + slice_size]:
            if session.user is None:
                greeting += 1
                if hello_timeout > 0 and session.opened < now - hello_timeout:
                    message = f"no hello within {hello_timeout:g} s"
                    session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))
                    continue
            if idle_timeout > 0 and session.last_rx < now - idle_timeout:
                message = f"idle for {idle_timeout:g} s"
                session.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, message))
            elif isinstance(session, Session):
                session.rest()  # idle memory: no rate-limit bucket while it is full
    return len(sessions) - greeting
