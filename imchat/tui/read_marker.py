"""The read marker: a line above the first message that arrived while you looked elsewhere.

Local to this run (what you saw last since starting imchat); the server's read markers of
revision 3 can seed it later. One marker per conversation: it is placed when the first new
message arrives while the conversation is not in front of you (another window, or the
terminal without focus) and moves the next time that happens after you came back.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from imchat.client.session import ConvKey
from imchat.tui.render import NICK_WIDTH, Entry
from imchat.tui.widgets.message_log import MessageLog

MARKER = Style(color="red", bold=True)
LABEL = " new since you left "


def marker_entry() -> Entry:
    rule = "─" * 4 + LABEL + "─" * 200
    return Entry(
        Text(" " * (6 + NICK_WIDTH + 1)),
        Text(rule, style=MARKER, no_wrap=True, overflow="crop"),
        meta={"read_marker": True, "decoration": True},
    )


class ReadMarkers:
    def __init__(self) -> None:
        self._entries: dict[ConvKey, Entry] = {}
        self._placed: set[ConvKey] = set()  # a marker is up since the user last looked

    def left(self, key: ConvKey) -> None:
        """The user stopped looking at ``key``: its next new message gets the marker."""
        self._placed.discard(key)

    def arriving(self, key: ConvKey, log: MessageLog, *, looking: bool) -> None:
        """Call before appending new messages from others to ``key``'s log."""
        if looking or key in self._placed or not log.entries:
            return
        self._placed.add(key)
        old = self._entries.get(key)
        if old is not None:
            log.remove_entry(old)
        if log.entries:
            entry = marker_entry()
            self._entries[key] = entry
            log.append([entry])
