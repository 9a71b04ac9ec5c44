"""Scrollback search: finding lines of the current conversation, and stepping through them.

:func:`local_search` is the one function that answers a query; it looks at the messages
already loaded, with the rules of the protocol's ``search`` request (every whitespace-separated
term, case-insensitively), so the server's search (revision 3) can replace or extend it
without changing :class:`SearchResults` or the search bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.style import Style

from imchat.tui.render import Entry
from imchat.tui.widgets.message_log import MessageLog


def terms(query: str) -> list[str]:
    return query.casefold().split()


def matches(entry: Entry, words: Sequence[str]) -> bool:
    # The prefix holds the time and the sender: "bob deploy" finds bob's lines about deploys.
    haystack = f"{entry.prefix.plain} {entry.body.plain}".casefold()
    return all(word in haystack for word in words)


def local_search(entries: Sequence[Entry], query: str) -> list[int]:
    """Indices of the entries matching ``query``, oldest first ([] for an empty query)."""
    words = terms(query)
    if not words:
        return []
    return [index for index, entry in enumerate(entries) if matches(entry, words)]


@dataclass(slots=True)
class SearchResults:
    """The hits of one query, and which one is shown (``position`` counts from the newest)."""

    query: str = ""
    hits: list[int] = field(default_factory=list)
    position: int = -1

    @property
    def current(self) -> int | None:
        return self.hits[-1 - self.position] if 0 <= self.position < len(self.hits) else None

    def step(self, older: bool) -> int | None:
        """Move to the next older (or newer) hit, wrapping around; returns its entry index."""
        if not self.hits:
            return None
        self.position = (self.position + (1 if older else -1)) % len(self.hits)
        return self.current

    def label(self) -> str:
        if not self.query.strip():
            return "search"
        if not self.hits:
            return f"search: no match for {self.query!r}"
        return f"search: {self.position + 1}/{len(self.hits)}"


@dataclass(slots=True)
class Highlight:
    """The hit shown, in which log, and the style it had before (to restore it)."""

    log: MessageLog
    entry: Entry
    previous: Style | None

    def clear(self) -> None:
        index = self.log.index_of(self.entry)
        if index is not None:
            self.log.restyle(index, self.previous)
