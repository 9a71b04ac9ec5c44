"""The input box: multi-line, every key applied in the order it arrived.

Textual runs a widget's key *bindings* only when the key has bubbled up to the app, after
the keys that followed it in the same read (tmux send-keys, a fast typist, a paste without
bracketed paste) were already typed: ``first<Enter>second<Enter>`` would submit
``firstsecond`` twice. So this input handles every key it owns (Enter, Tab, editing and
cursor keys) in its own ``_on_key``, in its own queue, and snapshots the text at the
moment Enter arrives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from imchat.tui.paste_parser import paste_text
from imchat.tui.widgets.in_order import run_binding_now

HISTORY_SIZE = 500
#: A paste of more lines than this asks before it goes into the input.
PASTE_CONFIRM_LINES = 5
#: The counter shows once a message is this close to the server's max_text.
COUNTER_MARGIN = 200
NEWLINE_KEYS = frozenset({"shift+enter", "ctrl+j", "alt+enter", "newline"})
#: Keys the app handles whatever has focus (scrolling the log, not the input).
APP_KEYS = frozenset({"pageup", "pagedown"})
#: Control characters a paste may hold (tab and newline are text): invisible in the input,
#: and the server would refuse the message for them.
_PASTED_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _control_picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    return "\u2421" if code == 0x7F else f"\\u{code:04x}"  # C1: as render.clean writes it


def trim_trailing_breaks(text: str) -> str:
    """``text`` without the line breaks it ends with, and the blank lines they end (spaces
    and tabs ending its last line of text stay): a copied line takes its line break along,
    and a message's blank last rows say nothing. Linear (a regex with a repeated group at
    the end backtracks quadratically over a paste of many blank lines)."""
    body = text.rstrip(" \t\n")
    cut = text.find("\n", len(body))
    return text if cut < 0 else text[:cut]


class ChatInput(TextArea):
    """Enter sends; Shift+Enter / Ctrl+J add a line; Up/Down recall; Tab completes."""

    BINDINGS = [
        Binding("up", "recall(-1)", "Previous input", show=False),
        Binding("down", "recall(1)", "Next input", show=False),
    ]

    class Submitted(Message):
        """Enter was pressed: ``value`` is exactly what was typed before it, less the line
        breaks (and blank lines) it ended with."""

        def __init__(self, chat_input: ChatInput, value: str) -> None:
            super().__init__()
            self.chat_input = chat_input
            self.value = value

        @property
        def control(self) -> ChatInput:
            return self.chat_input

    class JumpToBottom(Message):
        """End at the end of the input (or Ctrl+End): show the newest messages again."""

    class LongPaste(Message):
        """A paste of many lines: the app asks before inserting it."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(
        self,
        candidates: Callable[[], Iterable[str]],
        commands: Iterable[str],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            placeholder="Message, or /help  (Shift+Enter or Ctrl+J: new line)",
        )
        self._candidates = candidates
        self._commands = sorted(commands)
        self.sent: list[str] = []  # lines sent, for Up/Down recall
        self._recall: int | None = None
        self._draft = ""
        self._cycle: tuple[str, list[str], int] | None = None  # (stem line, matches, index)
        #: The server's max_text (from welcome); the input counts towards it.
        self.max_text = 4000

    # -- Input-like surface ----------------------------------------------------------------

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(text)
        self.move_to_end()

    def move_to_end(self) -> None:
        self.move_cursor(self.document.end)

    # -- keys, in arrival order --------------------------------------------------------------

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key in APP_KEYS:
            return  # bubbles to the app's bindings
        if key == "enter":
            self._stop(event)
            self.submit()
            return
        if key in NEWLINE_KEYS:
            self._stop(event)
            # Not as the first thing in an empty input: a CRLF text pasted without bracketed
            # paste is Enter then Ctrl+J per line, and that LF would lead the next message.
            if self.text:
                self.insert("\n")
            return
        if key in ("tab", "shift+tab"):
            # Shift+Tab cycles back through the completions instead of moving the focus
            # away from the input (where the next typed keys would be lost).
            self._stop(event)
            self.action_complete(-1 if key == "shift+tab" else 1)
            return
        if key == "ctrl+end" or (key == "end" and self.cursor_location == self.document.end):
            self._stop(event)
            self.post_message(self.JumpToBottom())
            return
        # Ctrl+C without a selection in the input goes on to the screen, which copies a
        # selection in the log.
        if not await run_binding_now(self, event):
            await super()._on_key(event)

    @staticmethod
    def _stop(event: events.Key) -> None:
        event.stop()
        event.prevent_default()

    def submit(self) -> None:
        # Without the line breaks ending it (Shift+Enter before Enter): no blank last row.
        value = trim_trailing_breaks(self.text)
        self.clear()
        self._cycle = None
        self.post_message(self.Submitted(self, value))

    async def _on_paste(self, event: events.Paste) -> None:
        event.stop()
        event.prevent_default()
        # A copied line ends with its line break: it is no row of the message (an empty row
        # in the input, a blank line sent), so the paste's trailing breaks are dropped.
        text = trim_trailing_breaks(paste_text(event.text))
        if not text:
            return
        # Shown as the log shows them (␛, ␇): what the input shows is what Enter sends.
        text = _PASTED_CONTROLS.sub(_control_picture, text)
        if text.count("\n") + 1 > PASTE_CONFIRM_LINES:
            self.post_message(self.LongPaste(text))
        else:
            self.insert(text)

    def _on_text_area_changed(self, event: TextArea.Changed) -> None:
        length = len(self.text)
        if length > self.max_text:
            self.border_subtitle = f"{length}/{self.max_text} too long"
            self.add_class("-too-long")
        elif length >= self.max_text - COUNTER_MARGIN:
            self.border_subtitle = f"{length}/{self.max_text}"
            self.remove_class("-too-long")
        else:
            self.border_subtitle = None
            self.remove_class("-too-long")

    # -- recall and completion -----------------------------------------------------------------

    def remember(self, line: str) -> None:
        if line and (not self.sent or self.sent[-1] != line):
            self.sent.append(line)
            del self.sent[:-HISTORY_SIZE]
        self._recall = None
        self._draft = ""

    def action_recall(self, step: int) -> None:
        row = self.cursor_location[0]
        # Inside a multi-line draft, Up and Down move between its lines.
        if (step < 0 and row > 0) or (step > 0 and row < self.document.line_count - 1):
            self.action_cursor_up() if step < 0 else self.action_cursor_down()
            return
        if not self.sent:
            return
        if self._recall is None:
            if step > 0:
                return
            self._draft = self.value
            index = len(self.sent) - 1
        else:
            index = self._recall + step
        if index < 0:
            index = 0
        if index >= len(self.sent):
            self._recall = None
            self.value = self._draft
        else:
            self._recall = index
            self.value = self.sent[index]

    def completions(self, line: str) -> tuple[str, list[str]]:
        """(the text before the word being completed, the candidate words)."""
        head, _, word = line.rpartition(" ")
        stem = head + " " if head else ""
        if not head and word.startswith("/"):
            return stem, [c + " " for c in self._commands if c.startswith(word.lower())]
        if not word:
            return stem, []
        lowered = word.lower()
        seen: dict[str, str] = {}
        for nick in self._candidates():
            if nick.lower().startswith(lowered):
                seen.setdefault(nick.lower(), nick)
        suffix = ": " if not head else " "
        return stem, [n + suffix for n in sorted(seen.values(), key=str.lower)]

    def action_complete(self, step: int = 1) -> None:
        if self._cycle is not None and self.value == self._cycle_value():
            stem, matches, index = self._cycle
            self._cycle = (stem, matches, (index + step) % len(matches))
        else:
            stem, matches = self.completions(self.value)
            if not matches:
                self._cycle = None
                self.app.bell()
                return
            self._cycle = (stem, matches, 0 if step > 0 else len(matches) - 1)
        self.value = self._cycle_value()

    def _cycle_value(self) -> str:
        assert self._cycle is not None
        stem, matches, index = self._cycle
        return stem + matches[index]
