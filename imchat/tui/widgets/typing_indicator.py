"""The line above the input: who is typing here, and what the next Enter will do (reply to
a message, save an edit)."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from imchat.tui.render import clean

HINT = Style(color="grey62", italic=True)
MODE = Style(color="#61afef", bold=True)


def typing_text(nicks: tuple[str, ...]) -> str:
    if not nicks:
        return ""
    names = [clean(n) for n in nicks]
    if len(names) == 1:
        return f"{names[0]} is typing…"
    if len(names) <= 3:
        return f"{', '.join(names[:-1])} and {names[-1]} are typing…"
    return "several people are typing…"


class TypingIndicator(Static):
    """Hidden while there is nothing to say."""

    DEFAULT_CSS = """
    TypingIndicator { height: auto; padding: 0 1; display: none; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.typing: tuple[str, ...] = ()
        self.mode: Text | None = None

    def show(self, *, typing: tuple[str, ...] | None = None, mode: Text | None = None) -> None:
        if typing is not None:
            self.typing = typing
        self.mode = mode
        self._refresh_line()

    def set_typing(self, typing: tuple[str, ...]) -> None:
        self.typing = typing
        self._refresh_line()

    def _refresh_line(self) -> None:
        parts: list[Text] = []
        if self.mode is not None:
            parts.append(self.mode)
        if self.typing:
            parts.append(Text(typing_text(self.typing), style=HINT))
        self.update(Text("   ").join(parts))
        self.display = bool(parts)
