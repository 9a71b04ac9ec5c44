"""Rate-limited error logging: one traceback per code site per interval, and a count of the rest.

Any client can make the server fail the same way again and again (a full disk refuses every
message; a bug hit by one request type is hit by every such request). Logging each failure
in full lets one client fill the disk with copies of one traceback. The filter lets the first
error of each site through, drops the others for ``interval`` seconds, and tells on the next
one it lets through how many it dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds during which further errors from one code site are counted instead of logged.
DEFAULT_INTERVAL = 60.0
#: Sites remembered at most (a bound on the filter's own memory).
MAX_SITES = 1024

Site = tuple[str, str, int]


class ErrorThrottle(logging.Filter):
    """Passes warnings and errors (and any record with a traceback) at most once per site and
    interval; everything else passes untouched.

    One instance serves many loggers (see :func:`install`); a record is judged once.
    """

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        #: Site -> (time its last error was let through, errors dropped since).
        self._sites: dict[Site, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = getattr(record, "_imchat_throttle", None)
        if verdict is None:
            verdict = self._judge(record)
            record._imchat_throttle = verdict
        return bool(verdict)

    def _judge(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.exc_info is None:
            return True
        # A filter that knows better may name the site (see imchat.server.http.parserlog).
        site = getattr(record, "_imchat_site", None) or (
            record.name,
            record.pathname,
            record.lineno,
        )
        now = self.clock()
        last = self._sites.get(site)
        if last is not None and now - last[0] < self.interval:
            self._sites[site] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            since = now - last[0]
            record.msg = f"{record.msg} [{last[1]} more like this in the last {since:.0f} s]"
        if last is None and len(self._sites) >= MAX_SITES:
            self._sites.pop(next(iter(self._sites)))
        self._sites[site] = (now, 0)
        return True

    def suppressed(self) -> int:
        """Errors dropped and not yet reported."""
        return sum(count for _, count in self._sites.values())


#: Loggers whose errors a client can provoke: the server's own and the libraries it drives.
THROTTLED_LOGGERS = ("imchat", "asyncio", "redis")


def install(interval: float = DEFAULT_INTERVAL) -> ErrorThrottle:
    """Throttle errors of the server's loggers and those of its libraries (idempotent).

    A filter on a logger sees only that logger's own records, so it goes on every logger
    under the names above that exists by now (all server modules are imported by then).
    """
    manager = logging.Logger.manager
    names = [
        name
        for name in list(manager.loggerDict)
        if any(name == top or name.startswith(top + ".") for top in THROTTLED_LOGGERS)
    ]
    loggers = [logging.getLogger(name) for name in {*names, *THROTTLED_LOGGERS}]
    throttle = next(
        (f for lg in loggers for f in lg.filters if isinstance(f, ErrorThrottle)), None
    ) or ErrorThrottle(interval)
    for logger in loggers:
        if throttle not in logger.filters:
            logger.addFilter(throttle)
    return throttle
