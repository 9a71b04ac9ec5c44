"""The hotlist: which conversations have unread activity, as in irssi's "Act:" line.

One short line for the status bar, listing conversations by their number so Alt+N (or
``/goto N``) reaches them; mentions and DMs are marked and come first.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.text import Text

from imchat.client.session import ConvKind
from imchat.tui.render import clean
from imchat.tui.widgets.conversation_list import ConvStatus

HOT = Style(color="black", bgcolor="red", bold=True)
WARM = Style(color="bright_white", bold=True)
LABEL = Style(color="grey62")


def hotlist(items: Sequence[ConvStatus]) -> Text:
    """``act: 3:@bob(2)! 2:#dev(5) 4:★(1)``, or empty text when nothing is unread."""
    active = [(n, s) for n, s in enumerate(items, 1) if s.unread]
    if not active:
        return Text("")
    active.sort(key=lambda pair: (not pair[1].attention, pair[0]))
    parts: list[Text | str] = [Text("act: ", style=LABEL)]
    for index, (number, status) in enumerate(active):
        if index:
            parts.append(" ")
        kind = status.key.kind
        # Short: the line shares the top bar with the topic, also at 80 columns.
        name = "★" if kind is ConvKind.ANNOUNCE else ("@" if kind is ConvKind.DM else "")
        name += "" if kind is ConvKind.ANNOUNCE else clean(status.title)
        mark = "!" if status.attention else ""
        parts.append(
            Text(f"{number}:{name}({status.unread}){mark}", style=HOT if status.attention else WARM)
        )
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def totals(items: Sequence[ConvStatus]) -> tuple[int, int]:
    """(unread messages, conversations that want attention) over all conversations."""
    return sum(s.unread for s in items), sum(1 for s in items if s.attention)
