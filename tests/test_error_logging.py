"""Errors a client can provoke are logged once per code site and interval, with a count.

The full-disk case is real SQLite behaviour: ``max_page_count`` makes every write that grows
the database fail with SQLITE_FULL, exactly as a full disk does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import REDIS_BACKEND_URL, Clients, RawClient

from imchat.server.logthrottle import ErrorThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(lineno: int, level: int = logging.ERROR, exc: bool = True) -> logging.LogRecord:
    exc_info = (ValueError, ValueError("x"), None) if exc else None
    return logging.LogRecord("imchat.x", level, "/x.py", lineno, "failed", None, exc_info)


def test_one_error_per_site_and_interval_then_a_count() -> None:
    clock = Clock()
    throttle = ErrorThrottle(60.0, clock)
    assert throttle.filter(record(1))
    assert [throttle.filter(record(1)) for _ in range(500)] == [False] * 500
    assert throttle.filter(record(2))  # another site has its own allowance
    assert throttle.suppressed() == 500
    clock.now = 61.0
    again = record(1)
    assert throttle.filter(again)
    assert "500 more like this" in again.getMessage()
    assert throttle.suppressed() == 0


def test_ordinary_records_are_never_throttled() -> None:
    throttle = ErrorThrottle(60.0, Clock())
    assert all(throttle.filter(record(1, logging.INFO, exc=False)) for _ in range(100))
    assert all(throttle.filter(record(1, logging.DEBUG, exc=False)) for _ in range(100))


def test_warnings_are_throttled_like_errors() -> None:
    throttle = ErrorThrottle(60.0, Clock())
    assert throttle.filter(record(1, logging.WARNING, exc=False))
    assert not throttle.filter(record(1, logging.WARNING, exc=False))


def test_a_record_is_judged_once_whatever_filters_it() -> None:
    throttle = ErrorThrottle(60.0, Clock())
    first = record(1)
    assert throttle.filter(first) and throttle.filter(first)


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


@pytest.mark.skipif(REDIS_BACKEND_URL is not None, reason="a full SQLite database")
@pytest.mark.server_config(rate=0)
async def test_full_disk_answers_internal_and_logs_compactly(
    server: Any, connect: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await connect.raw()
    await raw.hello("filler")
    assert (await raw.request({"type": "join", "room": "lobby", "id": "j"}))["type"] == "ok"
    store = server.store
    pages = await store._submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store._submit(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
    text = "x" * 4000
    for i in range(300):
        raw.send({"type": "say", "room": "lobby", "text": text, "cid": f"c{i}", "id": i})
    codes = []
    while len(codes) < 300:
        frame = await raw.recv()
        if "id" in frame:
            codes.append(frame.get("code", frame["type"]))
    assert set(codes) == {"internal"}
    # A new guest is still let in: nothing it needs has to be written.
    newcomer = await connect.raw()
    assert (await newcomer.hello("newcomer"))["type"] == "welcome"
    # Two sites fail per refused message (the writer's batch and the hub's request): each
    # logs its traceback once per interval, not 300 times.
    assert len(errors(caplog)) <= 4, [r.getMessage() for r in errors(caplog)]


async def test_a_connection_is_logged_at_info_by_its_hello_and_its_end(
    server: Any, connect: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """A connect storm: every log line is a formatted record and a write to stderr (three
    per connection made a tenth of the storm's cost). Its opening is logged at debug only:
    at info its hello names its address and nick, and its end is logged with both (a
    connection that never says hello too)."""
    caplog.set_level(logging.INFO, logger="imchat")
    conn = await connect("quiet")
    silent = await RawClient.open(server.port)
    await conn.close()
    await silent.close()
    await server.hub.drain_tasks(10)
    await asyncio.wait_for(server.hub.all_closed(), 10)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("imchat")]
    assert not [line for line in lines if line.startswith("connection from")]
    assert [line for line in lines if line.endswith(" is quiet")]
    closed = [line for line in lines if line.endswith("closed")]
    assert len(closed) == 2 and any("(quiet)" in line for line in closed)
    assert any("(-)" in line for line in closed)
