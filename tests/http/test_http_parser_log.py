"""Requests aiohttp's parser refuses are logged one line at a time, and counted when they
repeat; aiohttp's other errors keep their traceback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import TIMEOUT
from httpfixtures import Http, http_fixture  # noqa: F401

from imchat.server.logthrottle import ErrorThrottle

GARBAGE = b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def aiohttp_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("aiohttp.server")]


async def refused(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GARBAGE)
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)  # aiohttp closes after it
    finally:
        writer.close()
    return data


async def test_garbage_requests_log_bounded_lines(
    http: Http, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    clock = Clock()
    for f in logging.getLogger("aiohttp.server").filters:
        if isinstance(f, ErrorThrottle):
            monkeypatch.setattr(f, "clock", clock)
            monkeypatch.setattr(f, "_sites", {})
    port = http.server.http.port
    for _ in range(50):
        assert (await refused(port)).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    records = aiohttp_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    (line,) = records
    assert line.exc_info is None and line.levelno == logging.WARNING
    assert "\n" not in line.getMessage()
    assert line.getMessage().startswith("refused a malformed HTTP request from 127.0.0.1: 400")
    # After the interval, the next refusal is logged with the count of those dropped.
    clock.now += 61
    caplog.clear()
    assert (await refused(port)).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    (line,) = aiohttp_records(caplog)
    assert "[49 more like this" in line.getMessage(), line.getMessage()
    # A real error aiohttp logs from the same place keeps its traceback: refusals do not
    # use up its allowance.
    caplog.clear()
    site: Any = line
    real = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        site.pathname,
        site.lineno,
        "Error handling request from %s",
        ("127.0.0.1",),
        (RuntimeError, RuntimeError("boom"), None),
    )
    logging.getLogger("aiohttp.server").handle(real)
    (kept,) = aiohttp_records(caplog)
    assert kept.exc_info is not None and kept.levelno == logging.ERROR
