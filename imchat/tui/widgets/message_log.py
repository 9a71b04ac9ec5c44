"""A virtualised, wrap-aware conversation log that can grow at both ends.

Textual's ``RichLog`` renders every line when it is written and cannot prepend, and older
history is fetched by scrolling *up*. This log keeps entries as ``Text`` and only keeps the
*height* of each one at the current width (one line, for the common short message, found
without rendering anything). Strips are rendered only for rows on screen, through a small
cache, so 10,000 messages cost about as much per frame as 10.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from rich.style import Style
from rich.text import Text
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip

from imchat.tui.render import Entry

MAX_ENTRIES = 20_000
#: Below this many columns for the text beside time and nick, lines wrap at the full width.
MIN_BODY = 16


class MessageLog(ScrollView, can_focus=True):
    """Entries top to bottom; follows the newest unless the user has scrolled up.

    Whether to follow is kept as state (``following``), not guessed from the scroll
    position at the time of an append: under a flood, the position lags the growing size
    by a frame, and a guess would stop following for good.
    """

    #: Entries appended while the user was scrolled up (shown as "N new ↓").
    unseen: reactive[int] = reactive(0)
    following: reactive[bool] = reactive(True)

    DEFAULT_CSS = """
    MessageLog { background: $surface; }
    """

    class NeedOlder(Message):
        """The user reached the top: fetch the history before the first entry."""

        def __init__(self, log: MessageLog) -> None:
            super().__init__()
            self.log = log

        @property
        def control(self) -> MessageLog:
            return self.log

    def __init__(
        self, *, max_entries: int = MAX_ENTRIES, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.max_entries = max_entries
        self.entries: list[Entry] = []
        self._heights: list[int] = []
        self._starts: list[int] = []  # first row of each entry
        self._total = 0
        self._width = 0
        self._strips: LRUCache[int, list[Strip]] = LRUCache(512)
        #: The widget's base style, as the cached strips carry it. Textual computes
        #: ``rich_style`` from every ancestor on each call: once per row, that was the
        #: largest cost of a line arriving during a flood.
        self._base_style: Style | None = None
        self._generation = 0  # entry ids shift on prepend/trim; ids in the cache are absolute
        self._first_id = 0
        #: Set by the owner while older history is loading or once there is none.
        self.loading_older = False
        self.history_complete = False
        self._adjusting = False  # our own scrolling (trim, resize) is not the user's
        self._bottom_due = False

    # -- content ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        width = self._width
        for entry in entries:
            height = self._height(entry, width) if width else 1
            self._starts.append(self._total)
            self._heights.append(height)
            self._total += height
            self.entries.append(entry)
        if len(self.entries) > self.max_entries + self.max_entries // 10:
            self._trim()
        self._update_size()
        if self.following:
            self._to_bottom()
        else:  # "N new" counts lines of the conversation, not the read marker or a day
            self.unseen += sum(
                1 for e in entries if not e.meta.get("decoration") and "separator" not in e.meta
            )

    def replace(self, index: int, entry: Entry | None) -> None:
        """Put ``entry`` in place of the entry at ``index`` (a negative index counts from
        the end), or delete it: a folded join/part line grows in place."""
        if index < 0:
            index += len(self.entries)
        if not 0 <= index < len(self.entries):
            return
        if entry is None:
            del self.entries[index], self._heights[index]
            # Ids after the removed entry shift down by one: drop what they cached.
            self._strips.clear()
            self._rebuild_starts()
        else:
            self.entries[index] = entry
            self._heights[index] = self._height(entry, self._width) if self._width else 1
            self._strips.discard(self._first_id + index)
            if index == len(self.entries) - 1:  # the usual case: the newest entry grows
                self._total = self._starts[index] + self._heights[index]
            else:
                self._rebuild_starts()
        self._update_size()
        if self.following:
            self._to_bottom()

    def follow(self) -> None:
        """Jump to the newest entry and keep following (End, sending a message)."""
        self.following = True
        self.unseen = 0
        self._to_bottom()

    def _to_bottom(self) -> None:
        self._scroll_bottom()
        # Textual ignores a scroll until the layout knows the content overflows (the first
        # tall entry in a short log): do it again once this frame is laid out.
        if not self._bottom_due:
            self._bottom_due = True
            self.call_after_refresh(self._settle_bottom)

    def _settle_bottom(self) -> None:
        self._bottom_due = False
        if self.following:
            self._scroll_bottom()

    def _scroll_bottom(self) -> None:
        self._adjusting = True
        try:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)
        finally:
            self._adjusting = False

    def prepend(self, entries: list[Entry]) -> None:
        """Insert older entries above, keeping what the user is looking at in place."""
        if not entries:
            return
        width = self._width
        heights = [self._height(e, width) if width else 1 for e in entries]
        added = sum(heights)
        self.entries[:0] = entries
        self._heights[:0] = heights
        self._first_id -= len(entries)
        self._rebuild_starts()
        self._update_size()
        if self.following:
            self._to_bottom()
        else:
            self._adjusting = True
            try:
                self.scroll_to(y=self.scroll_y + added, animate=False, immediate=True)
            finally:
                self._adjusting = False

    def clear(self) -> None:
        self.entries.clear()
        self._heights.clear()
        self._starts.clear()
        self._total = 0
        self._strips.clear()
        self._update_size()

    def _trim(self) -> None:
        drop = len(self.entries) - self.max_entries
        removed = sum(self._heights[:drop])
        del self.entries[:drop], self._heights[:drop]
        self._first_id += drop
        self._rebuild_starts()
        self.history_complete = False
        self._adjusting = True
        try:
            self.scroll_to(y=max(0, self.scroll_y - removed), animate=False, immediate=True)
        finally:
            self._adjusting = False

    def _rebuild_starts(self) -> None:
        self._starts = [0, *accumulate(self._heights)][:-1] if self._heights else []
        self._total = sum(self._heights)

    def _update_size(self) -> None:
        """The scrollable size after entries came or went: this widget repainted, not the
        screen laid out. Textual's ``virtual_size`` reactive asks for a layout, and a layout
        redraws every widget on the screen: during a flood the room list, member list,
        status bar and input were repainted each frame though none had changed. The log's
        own size does not depend on its content (it fills its pane); the scrollbars are
        updated here, and a scrollbar that appears or goes asks for its layout itself
        (``show_vertical_scrollbar`` is a layout reactive)."""
        size = Size(self._width, self._total)
        if size == self.virtual_size:
            self.refresh()
            return
        self.set_reactive(MessageLog.virtual_size, size)
        self._scroll_update(size)
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base_style = None
        self._strips.clear()  # cached strips carry the widget's base style

    @property
    def base_style(self) -> Style:
        """``rich_style``, computed once per style update (see ``_base_style``)."""
        if self._base_style is None:
            self._base_style = self.rich_style
        return self._base_style

    # -- geometry --------------------------------------------------------------------------

    def _height(self, entry: Entry, width: int) -> int:
        prefix = entry.prefix.cell_len
        body = entry.body
        if "\n" not in body.plain and prefix + body.cell_len <= width:
            return 1
        return len(self._render_entry(entry, width))

    def on_resize(self) -> None:
        self._fit_width(self.scrollable_content_region.width)
        # Also when only the height changed (the pending lines below grew or shrank).
        if self.following:
            self._to_bottom()

    def _fit_width(self, width: int) -> bool:
        """Wrap every entry again for ``width``; False if there is nothing to do.

        Called on resize, and by :meth:`render_line` when the width it is drawn at is not
        the one the entries were wrapped for: a log shown before its first layout may get
        its only Resize while it is 0 wide, and nothing else lays it out again (entries
        arriving repaint it, they do not lay out the screen; see :meth:`_update_size`).
        """
        if not width or width == self._width:
            return False
        self._width = width
        self._strips.clear()
        self._heights = [self._height(e, width) for e in self.entries]
        self._rebuild_starts()
        self._update_size()
        return True

    def _render_entry(self, entry: Entry, width: int) -> list[Strip]:
        """The rows of one entry at ``width``: its prefix, then the body wrapped beside it.

        (Not ``_render``: that name is Textual's, and shadowing it broke copying a
        selection with Ctrl+C.)
        """
        console = self.app.console
        prefix_width = entry.prefix.cell_len
        if width - prefix_width >= MIN_BODY:
            body_width = width - prefix_width
            lines = entry.body.wrap(console, body_width) if entry.body.plain else [Text("")]
            heads = [entry.prefix] + [Text(" " * prefix_width)] * (len(lines) - 1)
        else:
            # Too narrow for a text column beside the time and nick: run them together
            # and wrap the whole line at the full width.
            head = Text(" ").join(part for part in entry.prefix.split(" ") if part.plain)
            together = Text.assemble(head, " ", entry.body)
            # A one-row entry (the read marker's rule) stays one row, cut at the width.
            together.no_wrap, together.overflow = entry.body.no_wrap, entry.body.overflow
            lines = together.wrap(console, max(1, width))
            heads = [Text("")] * len(lines)
        strips: list[Strip] = []
        base = self.base_style
        for head, line in zip(heads, lines, strict=True):
            text = Text.assemble(head, line)
            if entry.style is not None:
                text.stylize(entry.style)
            segments = [s for s in text.render(console) if s.text != "\n"]
            strip = Strip(segments).extend_cell_length(width, entry.style).crop(0, width)
            strips.append(strip.apply_style(base))
        return strips

    def _strips_for(self, index: int) -> list[Strip]:
        key = self._first_id + index
        strips = self._strips.get(key)
        if strips is None:
            strips = self._render_entry(self.entries[index], self._width)
            self._strips[key] = strips
        return strips

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._width and self._fit_width(width) and self.following:
            self._to_bottom()
        row = int(self.scroll_offset.y) + y
        if not self.entries or row >= self._total or not self._width:
            return Strip.blank(width, self.base_style)
        index = bisect_right(self._starts, row) - 1
        strips = self._strips_for(index)
        offset = row - self._starts[index]
        strip = strips[offset] if offset < len(strips) else Strip.blank(width, self.base_style)
        # Offsets let the mouse select text in the log (see get_selection).
        return strip.apply_offsets(0, row)

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected text: rows as shown, for the rows the selection spans."""
        if not self.entries or not self._width:
            return None
        last = self._total - 1 if selection.end is None else min(selection.end.y, self._total - 1)
        first = 0 if selection.start is None else max(0, selection.start.y)
        rows = ["" for _ in range(first)]
        row = first
        while row <= last:
            index = bisect_right(self._starts, row) - 1
            strips = self._strips_for(index)
            for strip in strips[row - self._starts[index] :]:
                if row > last:
                    break
                rows.append(strip.text.rstrip())
                row += 1
        return selection.extract("\n".join(rows)), "\n"

    # -- reaching the top ------------------------------------------------------------------

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if not self._adjusting:
            if new_value < old_value and new_value < self.max_scroll_y:
                self.following = False  # the user scrolled up: stay where they are
            elif new_value >= self.max_scroll_y:
                self.follow_resumed()
        if new_value <= 0 and old_value > 0:
            self.request_older()

    def follow_resumed(self) -> None:
        self.following = True
        self.unseen = 0

    def request_older(self) -> None:
        if not self.loading_older and not self.history_complete:
            self.post_message(self.NeedOlder(self))

    def _leave_bottom(self) -> None:
        """The user scrolls up: stop following now, not once the animated scroll has moved
        (a line arriving meanwhile would scroll to the bottom again after its frame and
        cancel the animation: the key press lost). At the top, ask for older history."""
        if self.scroll_y <= 0:
            self.request_older()
        elif self.max_scroll_y > 0:
            self.following = False

    def on_mouse_scroll_up(self) -> None:
        self._leave_bottom()

    def action_scroll_up(self) -> None:
        self._leave_bottom()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._leave_bottom()
        super().action_page_up()

    def plain_lines(self) -> list[str]:
        """The log as plain text, one entry per line (for tests and copying).

        Decorations such as the read marker line are left out: they are not conversation.
        """
        return [e.prefix.plain + e.body.plain for e in self.entries if not e.meta.get("decoration")]

    # -- revision 3: entries redrawn in place (edits, deletes, reactions) ----------------------

    def index_of_seq(self, seq: int) -> int | None:
        """The index of the message entry with this ``seq`` (newest first), if shown."""
        for index in range(len(self.entries) - 1, -1, -1):
            if self.entries[index].meta.get("seq") == seq:
                return index
        return None

    # -- finding and marking entries (search, read marker) ---------------------------------

    def scroll_to_entry(self, index: int) -> None:
        """Bring entry ``index`` into view, a third of the way down the window."""
        if 0 <= index < len(self.entries):
            top = self._starts[index] - self.scrollable_content_region.height // 3
            self.scroll_to(y=max(0, top), animate=False, immediate=True)

    def restyle(self, index: int, style: Style | None) -> None:
        """Give entry ``index`` another line style (search hits), repainting only it."""
        self.entries[index].style = style
        self._strips.discard(self._first_id + index)
        self.refresh()

    def index_of(self, entry: Entry) -> int | None:
        for index in range(len(self.entries) - 1, -1, -1):
            if self.entries[index] is entry:
                return index
        return None

    def remove_entry(self, entry: Entry) -> bool:
        """Take one entry out (the read marker moving); False if it is not here."""
        index = self.index_of(entry)
        if index is None:
            return False
        self.replace(index, None)
        return True

    def insert_entry(self, index: int, entry: Entry) -> None:
        """Put ``entry`` before the entry at ``index`` (the read marker, placed later)."""
        self.entries.insert(index, entry)
        self._heights.insert(index, self._height(entry, self._width) if self._width else 1)
        self._strips.clear()  # the ids of the entries after it shift
        self._rebuild_starts()
        self._update_size()
        if self.following:
            self._to_bottom()
