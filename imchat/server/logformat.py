"""``--log-format json``: one JSON object per log line, for log shippers.

Fields: ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, and ``exc``
with the traceback when there is one. Messages are formatted first (``%`` arguments filled),
and JSON escaping keeps a line a line whatever a client sent.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec

_encode = msgspec.json.Encoder().encode
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``--log-format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"--log-format must be text or json, not {log_format!r}")
