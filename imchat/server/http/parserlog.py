"""aiohttp's log of the requests its parser refuses: one line each, counted when they repeat.

aiohttp answers a request its HTTP parser refuses (a bad request line or header, broken
chunk framing) itself, and logs it on its ``aiohttp.server`` logger at ERROR with a
traceback: a bot probing the port wrote some twenty lines per probe, as fast as it could
send them. :class:`ParserRefusals` turns each such record into one WARNING line naming the
address and aiohttp's reason, without the traceback, and gives them all one throttle site of
their own, so the server's :class:`~imchat.server.logthrottle.ErrorThrottle` lets one through
per ``--error-log-interval`` and counts the rest. Anything else aiohttp logs there (an
exception in aiohttp's own request handling) keeps its traceback and its own site: a flood of
refusals does not hide it.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from imchat.server import logthrottle

#: The logger aiohttp's server writes its errors to.
AIOHTTP_SERVER_LOGGER = "aiohttp.server"
#: The throttle site all refusals share (``ErrorThrottle`` keys on the record's code site,
#: which refusals share with aiohttp's other errors).
REFUSAL_SITE = ("aiohttp.server", "<parser refusal>", 0)
#: Longest reason written: aiohttp quotes the offending bytes.
MAX_REASON = 200


class ParserRefusals(logging.Filter):
    """Rewrites a record of a request aiohttp's parser refused; passes every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        reason = " ".join(str(exc.message or type(exc).__name__).split())
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 1] + "…"
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "refused a malformed HTTP request from %s: %d %s"
        record.args = (peer, exc.code, reason)
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record._imchat_site = REFUSAL_SITE
        return True


def install(interval: float) -> None:
    """Refusals rewritten, then aiohttp's server errors throttled like the server's own
    (idempotent; in that order, so the throttle's count goes on the rewritten line)."""
    logger = logging.getLogger(AIOHTTP_SERVER_LOGGER)
    throttle = logthrottle.install(interval)
    if any(isinstance(f, ParserRefusals) for f in logger.filters) and throttle in logger.filters:
        return
    for old in [f for f in logger.filters if isinstance(f, ParserRefusals) or f is throttle]:
        logger.removeFilter(old)
    logger.addFilter(ParserRefusals())
    logger.addFilter(throttle)
