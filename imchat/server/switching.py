"""How often CPython makes a thread that holds the GIL hand it to one that waits for it.

The server runs two threads on what is often one core: the event loop and the SQLite writer.
A message is delivered and acknowledged after its commit, and the writer takes the GIL
several times per batch (to run its Python, to settle the loop's futures). While the loop
writes a broadcast out to a large room (15 ms for 1,000 recipients on a small machine) it
holds the GIL, and each of the writer's takes waited for CPython's switch interval, 5 ms
by default: the next message's commit, its ``ok`` and its deliveries waited with it.
A 1 ms interval bounds each such wait at 1 ms. Only a thread that waits asks for a switch,
so a lone busy thread is not interrupted more often (``benchmarks/README.md``, round 15:
paced R=1000 p50 13.0-15.6 -> 10.8-11.8 ms, flat-out throughput unchanged).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: Seconds a thread waiting for the GIL lets the holder run before it asks for a switch.
SWITCH_INTERVAL = 0.001


@contextlib.contextmanager
def server_switching() -> Iterator[None]:
    """The server's switch interval while the server runs; the process's own afterwards."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
