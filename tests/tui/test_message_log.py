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


def lines(count: int, start: int = 0) -> list[Entry]:
    return [Entry(Text("12:00 "), Text(f"line {n}")) for n in range(start, start + count)]


async def test_page_up_right_after_a_new_line_is_not_undone_by_the_follow() -> None:
    """CI under load: a line arrived, PageUp was pressed before the next frame, and the
    follow's second scroll to the bottom (after that frame) cancelled PageUp's animated
    scroll: the log stayed at the bottom, following, as if the key had never been pressed."""
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(MessageLog)
        log.focus()
        log.append(lines(60))
        await pilot.pause()
        assert log.following and log.scroll_y == log.max_scroll_y > 0
        log.append(lines(1, start=60))  # follows: scrolls now and again after the frame
        await pilot.press("pageup")
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        assert not log.following
        assert log.scroll_y < log.max_scroll_y


async def test_page_up_with_nothing_above_keeps_following() -> None:
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(MessageLog)
        log.focus()
        log.append(lines(3))
        await pilot.pause()
        await pilot.press("pageup")
        await pilot.pause()
        assert log.following
        log.append(lines(20, start=3))
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 0
