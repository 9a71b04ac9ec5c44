"""The right pane: who is in the current conversation, and who is online."""

from __future__ import annotations

from collections.abc import Iterable

from rich.style import Style
from rich.text import Text
from textual import on
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from imchat.protocol import nick_key
from imchat.tui.messages import OpenDirect
from imchat.tui.render import clean, nick_style
from imchat.tui.widgets.repaint import RepaintOnChange


class MemberList(RepaintOnChange, OptionList):
    """Selecting a member (Enter or click) opens a DM with them."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.nicks: list[str] = []
        self._me = ""
        self._online: set[str] = set()

    def show(self, me: str, members: Iterable[str], online: set[str]) -> None:
        nicks = sorted(members, key=lambda n: (nick_key(n) not in online, nick_key(n)))
        if nicks == self.nicks and self._online == online:
            return
        self.nicks = nicks
        self._me = me
        self._online = set(online)
        options = []
        for nick in nicks:
            here = nick_key(nick) in online
            mark = Text("● " if here else "○ ", style=Style(color="green" if here else "grey42"))
            name = Text(clean(nick), style=nick_style(nick) if here else Style(color="grey50"))
            if nick_key(nick) == nick_key(me):
                name.append(" (you)", style="grey50")
            options.append(Option(Text.assemble(mark, name), id=f"m-{nick_key(nick)}"))
        self.set_options(options)
        self.border_title = f"members {len(nicks)}"

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        nick = self.nicks[event.option_index]
        if nick_key(nick) != nick_key(self._me):
            self.post_message(OpenDirect(nick))
