"""Clickable links (OSC 8) for URLs in messages.

Textual writes a ``Style(link=url)`` span as ``ESC ] 8 ; id=… ; URL ESC \\ text ESC ] 8 ; ;
ESC \\`` with the URL verbatim (``textual.strip.Strip.render_style``), so the URL is the one
part of a message that reaches the terminal inside an escape sequence. Only ``http``,
``https`` and ``mailto`` become links, and :func:`safe_url` percent-encodes every character
outside printable ASCII (ESC, BEL, the C1 string terminator, spaces, bidi controls) so the
sequence cannot be ended early. The visible text stays the literal message text.
"""

from __future__ import annotations

import re

from rich.style import Style
from rich.text import Text

# A URL ends at whitespace or at characters that are rarely part of one in chat text.
_URL = re.compile(r"(?i)\b(?:https?://|mailto:)[^\s<>\"'`]+")
_TRAILING = ".,;:!?)]}'\""
_PAIRS = {")": "(", "]": "[", "}": "{"}
_SCHEMES = ("http://", "https://", "mailto:")
#: Longest URL made clickable; longer ones stay plain text.
MAX_URL = 2000

LINK = Style(underline=True)


def safe_url(url: str) -> str | None:
    """``url`` made safe to embed in OSC 8, or None if it is not a link we allow."""
    if not url.lower().startswith(_SCHEMES) or len(url) > MAX_URL:
        return None
    out = []
    for ch in url:
        code = ord(ch)
        if 0x21 <= code <= 0x7E and ch != "\\":
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    safe = "".join(out)
    if safe.lower() in _SCHEMES:
        return None
    return safe


def find_urls(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, url)`` of each link-worthy URL in ``text``."""
    found = []
    for match in _URL.finditer(text):
        raw = _trim(match.group())
        url = safe_url(raw)
        if url is not None:
            found.append((match.start(), match.start() + len(raw), url))
    return found


def _trim(raw: str) -> str:
    """Drop trailing punctuation, but keep a bracket that closes one inside the URL."""
    while raw and raw[-1] in _TRAILING:
        closer = raw[-1]
        opener = _PAIRS.get(closer)
        if opener is not None and raw.count(opener) >= raw.count(closer):
            break
        raw = raw[:-1]
    return raw


def linkify(text: Text) -> Text:
    """Add a link style to every URL span of ``text`` (in place; returns it)."""
    for start, end, url in find_urls(text.plain):
        text.stylize(LINK + Style(link=url), start, end)
    return text
