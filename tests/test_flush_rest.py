"""The registry's rest after a long flush: only when the senders are ahead of the writes.

A flush that carried several frames per session (a flat-out sender's window) makes the next
one wait, so what arrives meanwhile shares its writes. One that carried a message at a time
does not: the next message is not due yet, and resting would only hold it back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imchat.server import registry as registry_module
from imchat.server.registry import Registry
from imchat.server.stats import STATS


class SteppedLoop:
    """The running loop with a clock of its own, which each flush moves a second: a long
    flush, without waiting for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class Recipient:
    """A session that was queued ``frames`` frames and notes when it was flushed."""

    def __init__(self, clock: SteppedLoop, log: list[str], name: str, frames: int) -> None:
        self.clock, self.log, self.name, self.frames = clock, log, name, frames

    def flush(self) -> None:
        STATS.deliveries += self.frames  # as flush_all counts what it writes
        self.clock.now += 1.0
        self.log.append(self.name)


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedLoop:
    """A rest may last as long as the flush before it (3 s here: longer than any test)."""
    monkeypatch.setattr(registry_module, "FLUSH_REST_MAX", 60.0)
    return SteppedLoop(asyncio.get_running_loop())


async def flushed_once(clock: SteppedLoop, log: list[str], frames: int) -> Registry:
    """A registry after one long flush of three sessions, ``frames`` frames each."""
    registry = Registry(clock)  # type: ignore[arg-type]
    for name in ("a", "b", "c"):
        registry.mark_dirty(Recipient(clock, log, name, frames))  # type: ignore[arg-type]
    await turns(2)
    assert log == ["a", "b", "c"]
    return registry


async def test_after_a_message_at_a_time_the_next_flush_does_not_rest(clock: SteppedLoop) -> None:
    log: list[str] = []
    registry = await flushed_once(clock, log, frames=1)
    registry.mark_dirty(Recipient(clock, log, "next", 1))  # type: ignore[arg-type]
    await turns(2)
    assert log[-1] == "next"


async def test_after_a_flush_of_several_frames_per_session_the_next_one_rests(
    clock: SteppedLoop,
) -> None:
    log: list[str] = []
    registry = await flushed_once(clock, log, frames=registry_module.FLUSH_REST_FRAMES + 1)
    registry.mark_dirty(Recipient(clock, log, "next", 1))  # type: ignore[arg-type]
    await turns(5)
    assert "next" not in log  # resting: it shares the next flush with what arrives meanwhile
