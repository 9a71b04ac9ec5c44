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


class ScrollbackSearch:
    """One search in one conversation's log: its hits, the one shown, and its highlight."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.results = SearchResults()
        self._log: MessageLog | None = None
        self._highlight: Highlight | None = None

    def run(self, log: MessageLog | None, query: str) -> str:
        """Search ``log`` and show the newest hit; returns the label for the search bar."""
        self.clear()
        self._log = log
        self.results = SearchResults(query, local_search(log.entries if log else [], query))
        return self.step(older=True)

    def step(self, older: bool) -> str:
        """Show the next older (or newer) hit; returns the label for the search bar."""
        index = self.results.step(older)
        self._unhighlight()
        log = self._log
        if index is not None and log is not None and index < len(log.entries):
            entry = log.entries[index]
            self._highlight = Highlight(log, entry, entry.style)
            log.restyle(index, self.style)
            log.scroll_to_entry(index)
        return self.results.label()

    def clear(self) -> None:
        """Forget the search and give the highlighted line its own look back."""
        self._unhighlight()
        self.results = SearchResults()
        self._log = None

    def _unhighlight(self) -> None:
        highlight, self._highlight = self._highlight, None
        if highlight is not None:
            highlight.clear()
