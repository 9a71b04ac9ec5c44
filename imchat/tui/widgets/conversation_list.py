"""The left pane: rooms and DM conversations, with unread counts and attention marks."""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import on
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from imchat.client.session import ConvKey, ConvKind
from imchat.tui.messages import OpenConversation
from imchat.tui.render import clean
from imchat.tui.widgets.repaint import RepaintOnChange


@dataclass(slots=True)
class ConvStatus:
    key: ConvKey
    title: str
    unread: int = 0
    #: A message named us (rooms) or a new DM arrived: worth more than a count.
    attention: bool = False


class ConversationList(RepaintOnChange, OptionList):
    """Conversations in the order they were opened; Alt+N (or ``/goto N``) picks the N-th."""

    class ActivityChanged(Message):
        """Unread counts or the list changed (the hotlist and the window title follow)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.items: list[ConvStatus] = []
        self.current: ConvKey | None = None

    def index_of(self, key: ConvKey) -> int | None:
        for index, item in enumerate(self.items):
            if item.key == key:
                return index
        return None

    def get(self, key: ConvKey) -> ConvStatus | None:
        index = self.index_of(key)
        return None if index is None else self.items[index]

    def ensure(self, key: ConvKey, title: str) -> ConvStatus:
        status = self.get(key)
        if status is None:
            status = ConvStatus(key, title)
            if key.kind is ConvKind.ANNOUNCE:
                self.items.append(status)
            else:
                # Keep the announcements entry last.
                at = next(
                    (i for i, s in enumerate(self.items) if s.key.kind is ConvKind.ANNOUNCE),
                    len(self.items),
                )
                self.items.insert(at, status)
            self.refresh_items()
        return status

    def forget(self, key: ConvKey) -> None:
        """Take ``key`` off the list (not ``remove``: that is Textual's, for the widget)."""
        index = self.index_of(key)
        if index is not None:
            del self.items[index]
            self.refresh_items()

    def set_current(self, key: ConvKey) -> None:
        self.current = key
        status = self.get(key)
        if status is not None:
            status.unread = 0
            status.attention = False
        self.refresh_items()

    def bump(self, key: ConvKey, count: int, *, attention: bool) -> None:
        status = self.get(key)
        if status is None or key == self.current:
            return
        status.unread += count
        status.attention = status.attention or attention
        self.refresh_items()

    def _prompt(self, number: int, status: ConvStatus) -> Text:
        kind = status.key.kind
        icon = {ConvKind.ROOM: "", ConvKind.DM: "@", ConvKind.ANNOUNCE: "★ "}[kind]
        style = Style(bold=True) if status.key == self.current else Style()
        if status.attention:
            style += Style(
                color="black", bgcolor="magenta" if kind is ConvKind.DM else "yellow", bold=True
            )
        elif status.unread:
            style += Style(bold=True, color="bright_white")
        label = Text.assemble(
            Text(f"{number} ".rjust(3) if len(self.items) > 9 else f"{number} ", style="grey50"),
            Text(icon + clean(status.title), style=style),
        )
        if status.unread:
            label.append(
                f" {status.unread}",
                style=Style(color="black", bgcolor="cyan")
                if not status.attention
                else Style(color="black", bgcolor="red", bold=True),
            )
        return label

    def refresh_items(self) -> None:
        highlighted = self.index_of(self.current) if self.current else None
        self.set_options(
            Option(self._prompt(n, s), id=f"c{n}") for n, s in enumerate(self.items, 1)
        )
        if highlighted is not None:
            self.highlighted = highlighted
        self.post_message(self.ActivityChanged())

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(OpenConversation(self.items[event.option_index].key))
