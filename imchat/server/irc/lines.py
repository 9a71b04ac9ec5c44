"""IRC lines, sans-I/O: a decoder you feed bytes, a parser and a serializer.

The grammar is RFC 1459/2812 with IRCv3 message tags: ``[@tags] [:source] COMMAND params``.
A line is at most 512 bytes without its tags (CR LF included) and the tags at most 8191 bytes
(``@`` and the space included), so a whole line is at most 8703 bytes. The decoder never
buffers more than that: a longer line is reported (:class:`LineTooLong`) and skipped up to its
end. Lines end at LF; a CR before it is dropped; a NUL or a lone CR inside a line is refused.

UTF-8: every line must be valid UTF-8. A line that is not is refused (:class:`BadLine` with
``INVALID_UTF8``), never repaired: imchat does not alter a user's text silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

#: The body of a line (source, command, params, CR LF) in bytes.
MAX_LINE = 512
#: The tags of a line, ``@`` and the separating space included.
MAX_TAGS = 8191
MAX_TOTAL = MAX_LINE + MAX_TAGS

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class BadLine(Exception):
    """A line that cannot be read; ``code`` names why (an IRCv3 standard-reply code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LineTooLong(BadLine):
    def __init__(self) -> None:
        super().__init__("INPUT_TOO_LONG", "input line too long")


@dataclass(slots=True)
class Line:
    command: str
    params: list[str] = field(default_factory=list)
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def param(self, index: int, default: str = "") -> str:
        return self.params[index] if index < len(self.params) else default


def escape_tag_value(value: str) -> str:
    return "".join(_TAG_ESCAPES.get(ch, ch) for ch in value)


def unescape_tag_value(value: str) -> str:
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(_TAG_UNESCAPES.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def parse_line(raw: bytes) -> Line:
    """One line without its line ending; raises :class:`BadLine`."""
    if b"\0" in raw or b"\r" in raw:
        raise BadLine("INVALID_LINE", "line contains NUL or CR")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("INVALID_UTF8", "line is not valid UTF-8") from None
    tags: dict[str, str] = {}
    rest = text.lstrip(" ")
    if rest.startswith("@"):
        tag_text, _, rest = rest[1:].partition(" ")
        if len(tag_text.encode()) + 2 > MAX_TAGS:
            raise LineTooLong()
        for item in tag_text.split(";"):
            if item:
                key, _, value = item.partition("=")
                tags[key] = unescape_tag_value(value)
        rest = rest.lstrip(" ")
    if len(rest.encode()) + 2 > MAX_LINE:
        raise LineTooLong()
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing = None
    head, sep, tail = rest.partition(" :")
    if rest.startswith(":"):
        head, trailing = "", rest[1:]
    elif sep:
        trailing = tail
    words = head.split()
    if not words:
        raise BadLine("INVALID_LINE", "line has no command")
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return Line(words[0].upper(), params, source, tags)


def format_line(line: Line) -> bytes:
    """Serialize without any length check (see :func:`fit_text` for splitting texts)."""
    return format_parts(line.command, line.params, line.source, line.tags)


#: Characters that end an IRC line (or that a client may take to): never inside one.
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " ", "\0": " "})


def format_parts(
    command: str,
    params: list[str] | tuple[str, ...],
    source: str | None = None,
    tags: dict[str, str] | None = None,
) -> bytes:
    """One IRC line. A parameter's CR, LF and NUL become spaces: texts that may hold a
    newline (a topic) would otherwise end the line there, and a client would read what
    follows as a line of its own (a forged PRIVMSG or numeric). Messages are split at their
    newlines before they get here (:func:`split_text`)."""
    params = [param.translate(_LINE_BREAKS) for param in params]
    parts: list[str] = []
    if tags:
        parts.append(
            "@" + ";".join(f"{k}={escape_tag_value(v)}" if v else k for k, v in tags.items())
        )
    if source:
        parts.append(":" + source)
    parts.append(command)
    if params:
        *middle, last = params
        parts.extend(middle)
        if not last or " " in last or last.startswith(":"):
            last = ":" + last
        parts.append(last)
    return (" ".join(parts) + "\r\n").encode()


#: What in a user's text acts on the characters around it: C0 and C1 controls (line breaks and
#: tab included), DEL, and the bidi marks, embeddings, overrides and isolates.
_ACTS_AROUND = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _stand_in(match: re.Match[str]) -> str:
    ch = match.group()
    return " " if ch in "\t\n\r" else f"\\u{ord(ch):04x}"


def inert(text: str) -> str:
    """A user's text made safe to stand inside the server's own words, as the emoji of
    ``(reacted 👍 to message 12)``: an override (U+202E) in it would reverse the words after
    it on the reader's screen, a newline would cut the notice in two. Line breaks and tab
    become spaces; the other controls and the bidi characters are written out (``\\u202e``,
    as the TUI shows them). Texts that are a line's whole message are not changed (imchat
    does not alter a user's text), only split (:func:`split_text`)."""
    return _ACTS_AROUND.sub(_stand_in, text)


_ZWJ = "\u200d"
_VIRAMA = 9  # the canonical combining class of a virama, which joins consonants


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _inside(text: str, cut: int) -> bool:
    """Whether cutting ``text`` before index ``cut`` would split what is drawn as one
    character: a mark (accent, vowel sign, variation selector, skin tone, tag), what a ZWJ or
    a virama joins, or a flag's two regional indicators. (Close to Unicode's extended
    grapheme clusters, without a table.)"""
    after, before = text[cut], text[cut - 1]
    if unicodedata.category(after).startswith("M") or after == _ZWJ or before == _ZWJ:
        return True
    if "\U0001f3fb" <= after <= "\U0001f3ff" or "\U000e0020" <= after <= "\U000e007f":
        return True
    if unicodedata.combining(before) == _VIRAMA:
        return True
    if _regional(after) and _regional(before):
        run = cut
        while run > 0 and _regional(text[run - 1]):
            run -= 1
        return (cut - run) % 2 == 1
    return False


def _cluster_cut(text: str, cut: int) -> int:
    """``cut`` moved back to the start of the character it would split (unchanged if that
    character alone fills the line, as a long run of combining marks can)."""
    back = cut
    while 0 < back < len(text) and _inside(text, back):
        back -= 1
    return back or cut


def split_text(text: str, max_bytes: int) -> list[str]:
    """Cut a text into pieces of at most ``max_bytes`` UTF-8 bytes: at newlines (IRC lines
    cannot hold one), then at the last space that fits, else between the characters as
    drawn (a flag, an accented letter, an emoji sequence stay whole)."""
    pieces: list[str] = []
    for para in text.split("\n"):
        while len(para.encode()) > max_bytes:
            cut = _cluster_cut(para, len(para.encode()[:max_bytes].decode("utf-8", "ignore")))
            space = para.rfind(" ", 1, cut + 1)
            if space > cut // 2:
                cut = space
            pieces.append(para[:cut])
            para = para[cut:].lstrip(" ") if space > 0 and cut == space else para[cut:]
        pieces.append(para)
    return [p for p in pieces if p] or [""]


class LineDecoder:
    """Feed it byte chunks; it yields complete lines as bytes, or a :class:`LineTooLong`
    in the place of a line that exceeded :data:`MAX_TOTAL` (the rest of it is skipped)."""

    __slots__ = ("_buffer", "_skipping")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skipping = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[bytes | LineTooLong]:
        buf = self._buffer
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                line = bytes(buf[start:end])
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) + 2 > MAX_TOTAL:
                    yield LineTooLong()
                elif line.strip(b" "):
                    yield line
            start = end + 1
        del buf[:start]
        if len(buf) + 2 > MAX_TOTAL:
            buf.clear()
            if not self._skipping:
                self._skipping = True
                yield LineTooLong()
