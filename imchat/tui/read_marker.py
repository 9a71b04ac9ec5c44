"""The read marker: a line above the first message you have not seen.

One marker per conversation. It is placed when the first new message arrives while the
conversation is not in front of you (another window, or the terminal without focus), and
when a conversation is opened where the server's read marker (revision 3, shared by every
session of the user) says messages are unread; it moves the next time either happens.

The line separates what was read from what is new, so it is drawn only with a message
above it: never above the first message of a conversation in which everything is new. When
the server's marker lies below the oldest message loaded, everything shown is new and where
the reading stopped is not shown yet: the line waits until scrolling back loads the history
that holds the last message read, and goes below it then.
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
        #: The server's marker of a conversation on screen whose line waits for older history.
        self._waiting: dict[ConvKey, int] = {}

    def left(self, key: ConvKey) -> None:
        """The user stopped looking at ``key``: its next new message gets the marker."""
        self._placed.discard(key)
        self._waiting.pop(key, None)

    def waiting(self, key: ConvKey) -> int | None:
        """The read marker ``key`` was opened with, if its line waits for older history."""
        return self._waiting.get(key)

    def arriving(self, key: ConvKey, log: MessageLog, *, looking: bool) -> None:
        """Call before appending new messages from others to ``key``'s log."""
        if looking or key in self._placed:
            return
        self._placed.add(key)
        if not any(entry.meta.get("seq") is not None for entry in reversed(log.entries)):
            # A conversation whose first message this is (only notices above it: "You
            # joined", a day): all of it is new, no line needed (and none may come before
            # the next message, as if this one had been seen).
            return
        old = self._entries.get(key)
        if old is not None:
            log.remove_entry(old)
        entry = marker_entry()
        self._entries[key] = entry
        log.append([entry])

    def place_before(self, key: ConvKey, log: MessageLog, seq: int, *, read: int) -> None:
        """Put the marker above the message ``seq``, the first one after ``read`` (the
        server's read marker) from someone else, if a message read (``read`` or below) is
        shown above it; else remember ``read`` for :meth:`waiting`."""
        index = log.index_of_seq(seq)
        if index is None:
            return
        if not any(_seq_at_most(entry, read) for entry in log.entries[:index]):
            self._waiting[key] = read
            return
        self._waiting.pop(key, None)
        old = self._entries.get(key)
        if old is not None:
            if index > 0 and log.entries[index - 1] is old:
                return  # already there
            if log.remove_entry(old) and log.index_of(old) is None:
                index = log.index_of_seq(seq) or 0
        entry = marker_entry()
        self._entries[key] = entry
        log.insert_entry(index, entry)


def _seq_at_most(entry: Entry, read: int) -> bool:
    seq = entry.meta.get("seq")
    return isinstance(seq, int) and seq <= read
