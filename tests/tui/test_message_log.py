"""The log widget on its own, in a minimal app: what it draws, whatever order Textual's
events came in."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from imchat.tui.render import Entry
from imchat.tui.widgets import MessageLog


class LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield MessageLog()


async def test_a_log_whose_only_resize_came_while_zero_wide_still_draws_its_entries() -> None:
    """Seen under load: a conversation's log got its Resize before it had a width, and then
    drew nothing at all (entries arriving repaint the log, they do not lay it out again)."""
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(MessageLog)
        await pilot.pause()
        log._width = 0  # as if its on_resize saw it 0 wide
        log.append([Entry(Text("12:00 "), Text("hello there")), Entry(Text("12:01 "), Text("x"))])
        await pilot.pause()
        rows = [log.render_line(y).text for y in range(log.size.height)]
        assert any("hello there" in row for row in rows), rows
        assert log._width == log.scrollable_content_region.width
