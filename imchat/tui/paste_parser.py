"""Textual's input parser, made to keep an escape character inside a bracketed paste.

Textual's ``XTermParser`` starts reading an escape sequence at every ESC, also between the
paste's ``ESC [200~`` and ``ESC [201~``. Such a sequence is never a key, so the characters
after the ESC (``[31mred…`` of pasted coloured log output) were re-issued as key presses,
typed into the input *before* the paste (which is delivered when it ends): the message came
out scrambled. Here every ESC inside a paste reaches the parser as ``␛`` (U+241B, what the
log shows for an ESC from the network too), so the paste arrives whole and in order, and the
user sees in the input what the protocol would refuse as a control character.

Textual's drivers build their parser by name in their input threads; :func:`install` points
those names at :class:`PasteSafeParser`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable

from textual._xterm_parser import XTermParser
from textual.message import Message

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
ESC_PICTURE = "\u241b"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (a marker split
    between two reads)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class PasteSafeParser(XTermParser):
    """An ``XTermParser`` that never sees an ESC inside a bracketed paste."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__(debug)
        self._pasting = False
        #: Outside a paste: the end of the last read that may begin ``PASTE_START`` (it was
        #: passed on, since a lone ESC is the Escape key and must not wait).
        self._start_tail = ""
        #: Inside a paste: the end of the last read that may begin ``PASTE_END`` (held back).
        self._held = ""

    def feed(self, data: str) -> Iterable[Message]:
        return super().feed(self._guard(data))

    def _guard(self, data: str) -> str:
        out: list[str] = []
        while data:
            if not self._pasting:
                seen = self._start_tail + data
                at = seen.find(PASTE_START)
                if at < 0:
                    out.append(data)
                    self._start_tail = seen[len(seen) - _partial_suffix(seen, PASTE_START) :]
                    return "".join(out)
                # Pass on everything up to the end of the start marker, from this read only.
                upto = at + len(PASTE_START) - len(self._start_tail)
                out.append(data[:upto])
                data = data[upto:]
                self._start_tail = ""
                self._pasting = True
            else:
                seen = self._held + data
                self._held = ""
                at = seen.find(PASTE_END)
                if at < 0:
                    keep = _partial_suffix(seen, PASTE_END)
                    self._held = seen[len(seen) - keep :]
                    out.append(seen[: len(seen) - keep].replace("\x1b", ESC_PICTURE))
                    return "".join(out)
                out.append(seen[:at].replace("\x1b", ESC_PICTURE) + PASTE_END)
                data = seen[at + len(PASTE_END) :]
                self._pasting = False
        return "".join(out)


_CR_RUN = re.compile(r"\r+")


def paste_text(text: str) -> str:
    """A paste's line endings as the input's newlines: CRLF, LF and a lone CR one each.

    A terminal may turn every LF of a paste into CR (tmux's ``paste-buffer`` does, unless
    ``-r``): a CRLF text then arrives as ``a\\r\\rb``, and taking each CR for a newline
    put a blank line between every two lines and doubled each blank line. When a paste holds
    no LF and every run of CRs is of even length, it is read as such a CRLF text: each pair is
    one newline. (An LF text whose every break is a blank line, pasted so, looks the same
    and loses those blank lines: the input shows the text before it is sent.)
    """
    if "\r" not in text:
        return text
    if "\n" not in text and all(len(run) % 2 == 0 for run in _CR_RUN.findall(text)):
        return text.replace("\r\r", "\n")
    return text.replace("\r\n", "\n").replace("\r", "\n")


DRIVERS = ("linux_driver", "linux_inline_driver", "web_driver")


def install() -> None:
    """Make Textual's drivers (terminal and web) read input with :class:`PasteSafeParser`.

    A driver that cannot be imported here (``termios`` on Windows) is not the one in use.
    """
    for name in DRIVERS:
        try:
            module = importlib.import_module(f"textual.drivers.{name}")
        except ImportError:
            continue
        setattr(module, "XTermParser", PasteSafeParser)  # noqa: B010 (a module by name)
