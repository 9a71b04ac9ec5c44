"""Turning network data into Rich ``Text``: the one place hostile text meets the terminal.

Everything from the network is treated as data. It only ever becomes a ``Text`` through
:func:`clean`, which makes control characters visible (so an ANSI escape or a carriage return
cannot move the cursor or recolour the screen), and is only ever combined with
``Text.assemble``: no markup string is ever built from user content, so ``[bold red]`` is
shown as typed. Depends on Rich only, so it is unit-testable without an app.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.cells import get_character_cell_size
from rich.style import Style
from rich.text import Text

from imchat.client.session import Gap
from imchat.protocol import nick_key
from imchat.tui.links import linkify

TimeFormat = Callable[[float], str]

# C0 controls except newline, DEL, C1 controls, and the bidi overrides/isolates that can
# make text render in an order other than the one it was sent in.
_UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

#: A palette that reads on dark and light themes; a nick keeps its colour for ever.
NICK_COLOURS = (
    "#e06c75",
    "#98c379",
    "#e5c07b",
    "#61afef",
    "#c678dd",
    "#56b6c2",
    "#d19a66",
    "#be5046",
    "#7ec699",
    "#f78c6c",
    "#82aaff",
    "#ff79c6",
)

NICK_WIDTH = 12

SYSTEM = Style(color="grey62", italic=True)
TIMESTAMP = Style(color="grey50")
GAP = Style(color="yellow", bold=True)
ANNOUNCE = Style(color="black", bgcolor="yellow", bold=True)
MENTION = Style(bgcolor="#3b3000")
PENDING = Style(color="grey50", italic=True)
DAY = Style(color="cyan", bold=True)


# Emoji sequences that terminals draw at a width other than the one Rich computes (and that
# differ between terminals: tmux 3.3 draws a ZWJ family as three emoji, a VS16 heart as one
# cell): a row holding one would shift its right border. What is left after removing the
# joiner, the presentation selectors and the skin-tone modifiers is measured the same by
# Rich and by the terminal (each emoji of a family shown side by side, a heart as text).
_EMOJI_GLUE = re.compile(
    r"[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]"
    r"|(?<=[\u2600-\u27bf\U0001f000-\U0001faff])\u200d"
)


#: A run of joiners (those after an emoji went with ``_EMOJI_GLUE``).
_JOINERS = re.compile(r"\u200d+")
_EMOJI = re.compile(r"[\u2600-\u27bf\U0001f000-\U0001faff]")


def _joiners(match: re.Match[str]) -> str:
    """tmux 3.3 draws the character after a joiner inside the cell before it when that
    character is an emoji or wide (``a‍👍`` in one cell, the emoji hidden, the row short
    of what Rich measured): such a joiner is left out. Before a narrow letter (Indic
    conjuncts) it changes no width and is kept."""
    after = match.string[match.end() : match.end() + 1]
    if after and (_EMOJI.match(after) or get_character_cell_size(after) > 1):
        return ""
    return match.group()


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if ch == "\t":
        return "    "
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ␛ for ESC, ␍ for CR
    if code == 0x7F:
        return "\u2421"
    return f"\\u{code:04x}"


def clean(value: Any) -> str:
    """Network text made inert: control and bidi characters replaced by visible stand-ins,
    and emoji glue that terminals measure unlike Rich removed (so is a joiner before an
    emoji or a wide character, which tmux glues into the cell before it)."""
    text = _UNSAFE.sub(_visible, value if isinstance(value, str) else str(value))
    return _JOINERS.sub(_joiners, _EMOJI_GLUE.sub("", text))


def one_line(value: Any) -> str:
    """Network text for a place that has one line (a listing, a notice): :func:`clean`, with
    every run of whitespace, newlines included, as one space."""
    return " ".join(clean(value).split())


def nick_style(nick: str) -> Style:
    colour = NICK_COLOURS[zlib.crc32(nick_key(nick).encode()) % len(NICK_COLOURS)]
    return Style(color=colour, bold=True)


def default_time_format(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def default_date_format(ts: float) -> str:
    """The day ``ts`` falls on, as shown on day separators and older lines' times."""
    return time.strftime("%a %d %b %Y", time.localtime(ts))


def fit_nick(nick: str, width: int = NICK_WIDTH) -> str:
    """A nick cut to ``width`` cells (with an ellipsis), right-aligned in that width.

    Nicks may be 32 characters long; an uncut one would push the text of its line far to
    the right of everyone else's.
    """
    if len(nick) > width:
        nick = nick[: width - 1] + "…"
    return nick.rjust(width)


def mentions(text: str, nick: str) -> bool:
    """Whether ``text`` names ``nick`` as a word (case-insensitively)."""
    pattern = r"(?<![\w\-\[\]\\^{}|`])" + re.escape(nick) + r"(?![\w\-\[\]\\^{}|`])"
    return re.search(pattern, text, re.IGNORECASE) is not None


@dataclass(slots=True)
class Entry:
    """One logical line of a conversation: a fixed prefix and a body that wraps beside it."""

    prefix: Text
    body: Text
    style: Style | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Formatter:
    """Builds :class:`Entry` objects for one user's view (their nick decides mentions)."""

    def __init__(
        self,
        me: str,
        time_format: TimeFormat = default_time_format,
        *,
        date_format: TimeFormat = default_date_format,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.time_format = time_format
        self.date_format = date_format
        self.clock = clock
        self.mention_style = MENTION

    def _stamp(self, message: dict[str, Any] | None) -> Text:
        """The time of a line; lines of an earlier day carry their date too."""
        ts = message.get("ts") if message else self.clock()
        if not isinstance(ts, int | float):
            return Text("--:-- ", style=TIMESTAMP)
        stamp = self.time_format(float(ts))
        day = self.date_format(float(ts))
        if day != self.date_format(self.clock()):
            stamp = f"{day} {stamp}"
        return Text(stamp + " ", style=TIMESTAMP)

    def day_of(self, message: dict[str, Any]) -> str | None:
        ts = message.get("ts")
        return self.date_format(float(ts)) if isinstance(ts, int | float) else None

    def day_separator(self, day: str) -> Entry:
        label = "today" if day == self.date_format(self.clock()) else day
        return Entry(
            Text(" " * 6),
            Text(f"─── {label} ───", style=DAY),
            meta={"separator": day},
        )

    def _nick_cell(self, nick: str, *, marker: str = "") -> Text:
        return Text(fit_nick(marker + nick) + " ", style=nick_style(nick))

    def message(self, message: dict[str, Any]) -> Entry:
        """A ``msg``, ``dm`` or ``announce`` event as stored by the server."""
        kind = message.get("type")
        sender = clean(message.get("from", "?"))
        text = clean(message.get("text", ""))
        if kind == "announce":
            prefix = Text.assemble(self._stamp(message), Text("ANNOUNCEMENT ", style=ANNOUNCE))
            body = Text.assemble(
                Text(f"{sender}: ", style=Style(color="yellow", bold=True)),
                Text(text, style=Style(color="yellow", bold=True)),
            )
            return Entry(
                prefix, body, meta={"seq": message.get("seq"), "day": self.day_of(message)}
            )
        if message.get("kind") == "action":
            prefix = Text.assemble(self._stamp(message), Text("*".rjust(NICK_WIDTH) + " "))
            body = Text.assemble(
                Text(sender, style=nick_style(sender)),
                " ",
                linkify(Text(text, style=Style(italic=True))),
            )
        else:
            prefix = Text.assemble(self._stamp(message), self._nick_cell(sender))
            body = linkify(Text(text))
        mention = nick_key(sender) != nick_key(self.me) and mentions(text, self.me)
        return Entry(
            prefix,
            body,
            style=self.mention_style if mention else None,
            meta={
                "seq": message.get("seq"),
                "mention": mention,
                "from": nick_key(sender),
                "day": self.day_of(message),
            },
        )

    def system(self, message: dict[str, Any] | None, text: str | Text) -> Entry:
        """A quiet line: joins, parts, topic changes, command output; timed (now, if it
        is not about a server event)."""
        body = text if isinstance(text, Text) else Text(text, style=SYSTEM)
        return Entry(
            Text.assemble(self._stamp(message), Text("--".rjust(NICK_WIDTH) + " ", style=SYSTEM)),
            body,
            meta={"day": self.day_of(message) if message else self.date_format(self.clock())},
        )

    def event(self, message: dict[str, Any]) -> Entry | None:
        kind = message.get("type")
        nick = clean(message.get("nick", message.get("by", "?")))
        who = Text(nick, style=nick_style(nick))
        if kind == "joined":
            line = Text.assemble(who, Text(f" joined #{clean(message.get('room'))}", style=SYSTEM))
        elif kind == "parted":
            reason = message.get("reason")
            tail = f" left #{clean(message.get('room'))}" + (
                f" ({clean(reason)})" if reason else ""
            )
            line = Text.assemble(who, Text(tail, style=SYSTEM))
        elif kind == "topic":
            topic = clean(message.get("topic", ""))
            line = (
                Text.assemble(who, Text(" set the topic: ", style=SYSTEM), Text(topic))
                if topic
                else Text.assemble(who, Text(" cleared the topic", style=SYSTEM))
            )
        else:
            return None
        return self.system(message, line)

    def gap(self, gap: Gap) -> Entry:
        missing = gap.missing
        noun = "message" if missing == 1 else "messages"
        return Entry(
            Text(" " * (6 + NICK_WIDTH + 1)),
            Text(
                f"⚠ {missing} {noun} missed here: not available in the server's history", style=GAP
            ),
        )

    def pending(self, text: str, *, action: bool = False) -> Text:
        shown = clean(text)
        if action:
            shown = f"* {self.me} {shown}"
        # A multi-line message keeps its lines under the text column, as in the log.
        shown = shown.replace("\n", "\n" + " " * (6 + NICK_WIDTH + 1))
        return Text.assemble(
            Text("  …  ".ljust(6), style=PENDING),
            Text(fit_nick(self.me) + " ", style=PENDING),
            Text(shown, style=PENDING),
            Text("  (pending)", style=PENDING),
        )
