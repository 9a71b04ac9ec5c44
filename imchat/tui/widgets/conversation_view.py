"""One conversation: its log, and below it the messages still on their way."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from imchat.client.session import ConvKey
from imchat.tui.widgets.message_log import MessageLog


class ConversationView(Vertical):
    """Pending lines live in their own widget so confirming one never rewrites the log."""

    def __init__(self, key: ConvKey, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.key = key
        self.log_widget = MessageLog(classes="log")
        self.pending = Static("", classes="pending")

    def compose(self) -> ComposeResult:
        yield self.log_widget
        yield self.pending

    def show_pending(self, lines: list[Text]) -> None:
        self.pending.update(Text("\n").join(lines) if lines else "")
        self.pending.display = bool(lines)
