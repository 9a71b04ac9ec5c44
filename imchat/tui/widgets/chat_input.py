"""The input line: Up/Down recall, Tab completes commands and nicks."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from textual import events
from textual.binding import Binding
from textual.widgets import Input

HISTORY_SIZE = 500


class ChatInput(Input):
    BINDINGS = [
        Binding("up", "recall(-1)", "Previous input", show=False),
        Binding("down", "recall(1)", "Next input", show=False),
    ]

    def __init__(
        self,
        candidates: Callable[[], Iterable[str]],
        commands: Iterable[str],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(placeholder="Message, or /help", id=id)
        self._candidates = candidates
        self._commands = sorted(commands)
        self.history: list[str] = []
        self._recall: int | None = None
        self._draft = ""
        self._cycle: tuple[str, list[str], int] | None = None  # (stem line, matches, index)

    async def _on_key(self, event: events.Key) -> None:
        # Tab is handled here, in the input's own queue, not as a binding: bindings run when
        # the key reaches the app, after the keys that followed it in the same read (a paste,
        # a fast typist, tmux send-keys) were already typed, so "bo<Tab>x" would complete "x".
        # Shift+Tab cycles back through the completions instead of moving the focus away
        # from the input (where the next typed keys would be lost).
        if event.key in ("tab", "shift+tab"):
            event.stop()
            event.prevent_default()
            self.action_complete(-1 if event.key == "shift+tab" else 1)
            return
        await super()._on_key(event)

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[:-HISTORY_SIZE]
        self._recall = None
        self._draft = ""

    def action_recall(self, step: int) -> None:
        if not self.history:
            return
        if self._recall is None:
            if step > 0:
                return
            self._draft = self.value
            index = len(self.history) - 1
        else:
            index = self._recall + step
        if index < 0:
            index = 0
        if index >= len(self.history):
            self._recall = None
            self.value = self._draft
        else:
            self._recall = index
            self.value = self.history[index]
        self.cursor_position = len(self.value)

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
        self.cursor_position = len(self.value)

    def _cycle_value(self) -> str:
        assert self._cycle is not None
        stem, matches, index = self._cycle
        return stem + matches[index]
