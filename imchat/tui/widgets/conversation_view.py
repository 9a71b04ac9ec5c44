"""One conversation: its log, and below it the messages still on their way."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from imchat.client.session import ConvKey
from imchat.tui.widgets.message_log import MessageLog


class ConversationView(Vertical):
    """Pending lines live in their own widget so confirming one never rewrites the log.

    Between the two, "N new ↓" shows while the user is scrolled up and messages arrive.
    """

    def __init__(self, key: ConvKey, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.key = key
        self.log_widget = MessageLog(classes="log")
        self.news = Static("", classes="news")
        self.pending = Static("", classes="pending")
        #: The day of the newest dated entry (a separator goes before the next day's first).
        self.last_day: str | None = None
        #: Whether the app decided, once, if older history should fill the log (backfill.py).
        self.backfilled = False

    def compose(self) -> ComposeResult:
        yield self.log_widget
        yield self.news
        yield self.pending

    def on_mount(self) -> None:
        self.watch(self.log_widget, "unseen", self._unseen_changed)

    def _unseen_changed(self, unseen: int) -> None:
        self.news.update(
            Text(f" {unseen} new ↓  (End: jump to the newest)", style="bold") if unseen else ""
        )
        self.news.display = unseen > 0

    def show_pending(self, lines: list[Text]) -> None:
        self.pending.update(Text("\n").join(lines) if lines else "")
        self.pending.display = bool(lines)
