"""Folding join/part noise: consecutive joins and parts become one line that grows.

"bob joined", "carol joined", "dave left" in a row read as one line, ``2 joined, 1 left:
bob, carol · dave``; two hundred users quitting at once cost one line (updated in place),
not two hundred. A user who joins, says something and leaves again at once (``imchat send
--room``) shows as just the message. Pure data and Rich text: no Textual import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text

from imchat.protocol import nick_key
from imchat.tui.render import SYSTEM, clean, nick_style

#: Names listed in a folded line before "and N more".
SHOWN_NAMES = 6


@dataclass(slots=True)
class PresenceFold:
    """One run of joins and parts in one room, in the order they happened."""

    room: str
    joined: dict[str, str] = field(default_factory=dict)  # nick_key -> nick
    left: dict[str, str] = field(default_factory=dict)
    visited: dict[str, str] = field(default_factory=dict)  # joined, then left again
    #: The newest event folded in: its time is the line's.
    last_event: dict[str, Any] | None = None

    def add(self, kind: str, nick: str) -> None:
        key = nick_key(nick)
        if kind == "joined":
            self.left.pop(key, None)  # left and came back: just "joined"
            self.visited.pop(key, None)
            self.joined[key] = nick
        elif self.joined.pop(key, None) is not None:
            self.visited[key] = nick
        else:
            self.left[key] = nick

    def forget_join(self, nick: str) -> bool:
        """Drop ``nick``'s join (it left again right after speaking); True if it was here."""
        return self.joined.pop(nick_key(nick), None) is not None

    @property
    def empty(self) -> bool:
        return not self.joined and not self.left and not self.visited

    def text(self) -> Text:
        groups = [
            (verb, list(nicks.values()))
            for verb, nicks in (
                ("joined", self.joined),
                ("left", self.left),
                ("joined and left", self.visited),
            )
            if nicks
        ]
        if len(groups) == 1 and len(groups[0][1]) == 1:
            verb, (nick,) = groups[0]
            who = Text(clean(nick), style=nick_style(nick))
            return Text.assemble(who, Text(f" {verb} #{self.room}", style=SYSTEM))
        summary = ", ".join(f"{len(nicks)} {verb}" for verb, nicks in groups)
        line = Text(f"{summary} #{self.room}: ", style=SYSTEM)
        for index, (_, nicks) in enumerate(groups):
            if index:
                line.append(" · ", style=SYSTEM)
            self._names(line, nicks)
        return line

    @staticmethod
    def _names(line: Text, nicks: list[str]) -> None:
        for index, nick in enumerate(nicks[:SHOWN_NAMES]):
            if index:
                line.append(", ", style=SYSTEM)
            line.append(clean(nick), style=nick_style(nick))
        if len(nicks) > SHOWN_NAMES:
            line.append(f" and {len(nicks) - SHOWN_NAMES} more", style=SYSTEM)
