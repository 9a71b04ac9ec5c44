"""The search bar (Ctrl+F or ``/search``): incremental search of the current conversation.

Typing searches as you go and shows the newest match; Enter or Up steps to older matches,
Down to newer ones, Escape closes. The app does the searching: this widget only turns keys
into :class:`SearchBar.Step` and :class:`SearchBar.Closed` messages.
"""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import Input

from imchat.tui.widgets.in_order import run_binding_now


class SearchBar(Input):
    DEFAULT_CSS = """
    SearchBar {
        border: tall $warning 60%;
        height: 3;
    }
    SearchBar:focus { border: tall $warning; }
    """

    class Step(Message):
        """Show the next older (or newer) match."""

        def __init__(self, older: bool) -> None:
            super().__init__()
            self.older = older

    class Closed(Message):
        """The user is done searching."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="search this conversation", id=id)
        self.border_subtitle = "Enter/↑ older · ↓ newer · Esc close"

    async def _on_key(self, event: events.Key) -> None:
        # Handled in the widget's own queue, not as bindings, so the order of keys that
        # arrive in one read is kept (like the chat input's Tab).
        step = {"enter": True, "up": True, "down": False, "shift+enter": False}.get(event.key)
        if step is not None:
            event.stop()
            event.prevent_default()
            self.post_message(self.Step(step))
            return
        if event.key == "escape":
            event.stop()
            event.prevent_default()
            self.post_message(self.Closed())
            return
        if not await run_binding_now(self, event):  # Backspace, cursor keys: in order too
            await super()._on_key(event)
