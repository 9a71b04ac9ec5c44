"""Modal pickers of revision 3: a message (to reply to, edit, delete or react to), an emoji,
a yes/no confirmation, and search results to jump to. Each returns its choice or None."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, OptionList
from textual.widgets.option_list import Option

#: Offered by the reaction picker; any other emoji can be given as /react EMOJI.
EMOJIS = ("👍", "❤️", "😂", "🎉", "👀", "🚀", "✅", "❌")
#: Rows a picker's list takes at most (fewer on a small terminal).
LIST_ROWS = 24

PICKER_CSS = """
PickerScreen, ConfirmScreen { align: center middle; }
PickerScreen > Vertical, ConfirmScreen > Vertical {
    width: 80%; max-width: 100; height: auto; max-height: 80%;
    border: round $accent; background: $panel; padding: 0 1;
}
PickerScreen OptionList { height: auto; }
ConfirmScreen Button { margin: 1 1 0 0; }
"""


class PickerScreen(ModalScreen[int | None]):
    """Choose one of ``choices`` (label, value); Escape cancels.

    The highlight starts on the last choice (the newest message), or on ``start``.
    """

    DEFAULT_CSS = PICKER_CSS
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self, title: str, choices: list[tuple[Text, int]], *, start: int | None = None
    ) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices
        self.start = len(choices) - 1 if start is None else start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self.title_text, style="bold"))
            options = [
                Option(label, id=str(index)) for index, (label, _) in enumerate(self.choices)
            ]
            yield OptionList(*options, id="choices")

    def on_mount(self) -> None:
        choices = self.query_one("#choices", OptionList)
        self._fit(self.app.size.height)
        choices.highlighted = self.start if self.choices else None
        choices.focus()

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.height)

    def _fit(self, rows: int) -> None:
        """Keep the list inside its dialog (80 % of the screen, less its title and border):
        a taller list is clipped by the dialog, and its newest options, where the highlight
        starts, would be out of sight on a small terminal."""
        dialog_rows = rows * 80 // 100
        self.query_one("#choices", OptionList).styles.max_height = max(
            3, min(LIST_ROWS, dialog_rows - 3)
        )

    @on(OptionList.OptionSelected, "#choices")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        index = int(event.option.id or 0)
        self.dismiss(self.choices[index][1])

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; Enter on "Delete" confirms, Escape or "Keep" declines."""

    DEFAULT_CSS = PICKER_CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: Text, yes: str = "Delete", no: str = "Keep") -> None:
        super().__init__()
        self.question = question
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Button(self.yes, id="yes", variant="error")
            yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
