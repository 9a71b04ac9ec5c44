"""The generic webhook's template: ``{field.path}`` substitution and nothing else.

No expressions, calls, filters or attribute access: a template can only copy values out of the
posted JSON, so a hook's configuration can never run code. ``{{`` and ``}}`` are literal
braces; a path that names nothing becomes the empty string; a value that is not a string is
written as compact JSON.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)\}")
_encode = msgspec.json.Encoder().encode


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (``alerts.0.labels.severity``), or None."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _encode(value).decode()


def render(template: str, document: Any) -> str:
    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return _show(lookup(document, match.group(1)))

    return _FIELD.sub(substitute, template)
