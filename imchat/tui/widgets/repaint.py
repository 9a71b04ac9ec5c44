"""Widgets that hand the compositor their last lines while nothing about them changed.

Textual's compositor asks every widget whose *container* overlaps a changed region for its
lines, at every frame: while a room floods, the log changes each frame, and the room list,
member list and status bar (inside the same containers, or the screen's) were rendered again
each time though nothing in them had changed. A widget with this mixin keeps the lines it
rendered last and returns them while the region asked for, its size and its scroll offset
are the same and nothing asked it to repaint: every change to what a widget shows goes
through ``refresh`` (content, hover and focus) or a style update (theme, classes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.geometry import Offset, Region, Size
from textual.strip import Strip

if TYPE_CHECKING:
    from textual.widget import Widget

    _Base = Widget
else:
    # Not a Widget at run time: Textual takes a widget's CSS and component classes from
    # its first base that is a DOM node, which must stay the widget class (OptionList).
    _Base = object


class RepaintOnChange(_Base):
    """Mix in before the widget class: ``class StatusBar(RepaintOnChange, Static)``."""

    _painted: tuple[tuple[Region, Size, Offset], list[Strip]] | None = None

    def render_lines(self, crop: Region) -> list[Strip]:
        key = (crop, self.size, self.scroll_offset)
        painted = self._painted
        if painted is not None and painted[0] == key:
            return painted[1]
        strips = super().render_lines(crop)
        self._painted = (key, strips)
        return strips

    def refresh(self, *regions: Region, **kwargs: Any) -> RepaintOnChange:
        self._painted = None
        super().refresh(*regions, **kwargs)
        return self

    def notify_style_update(self) -> None:
        self._painted = None
        super().notify_style_update()
