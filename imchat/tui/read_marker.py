"""The read marker: a line above the first message you have not seen.

One marker per conversation. It is placed when the first new message arrives while the
conversation is not in front of you (another window, or the terminal without focus), and
when a conversation is opened where the server's read marker (revision 3, shared by every
session of the user) says messages are unread; it moves the next time either happens.
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
        if looking or key in self._placed:
            return
        self._placed.add(key)
        if not log.entries:
            # A conversation that begins with this message: all of it is new, no line needed
            # (and none may come before the next message, as if this one had been seen).
            return
        old = self._entries.get(key)
        if old is not None:
            log.remove_entry(old)
        if log.entries:
            entry = marker_entry()
            self._entries[key] = entry
            log.append([entry])

    def place_before(self, key: ConvKey, log: MessageLog, seq: int) -> None:
        """Put the marker above the message ``seq`` (the first one the server says is unread)."""
        index = log.index_of_seq(seq)
        if index is None:
            return
        old = self._entries.get(key)
        if old is not None:
            if index > 0 and log.entries[index - 1] is old:
                return  # already there
            if log.remove_entry(old) and log.index_of(old) is None:
                index = log.index_of_seq(seq) or 0
        entry = marker_entry()
        self._entries[key] = entry
        log.insert_entry(index, entry)
