"""The top bar: server, nick and connection state, with the reconnect countdown."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from imchat.client.session import State
from imchat.tui.render import clean
from imchat.tui.widgets.repaint import RepaintOnChange

#: Cells the topic needs to be worth showing (a bar and a few letters).
MIN_TOPIC = 12
#: Cells a disconnection's reason needs to be worth showing (its code, at least).
MIN_REASON = 16


class StatusBar(RepaintOnChange, Static):
    state: reactive[State] = reactive(State.CONNECTING)
    retry_at: reactive[float | None] = reactive(None)
    reason: reactive[str | None] = reactive(None)
    nick: reactive[str] = reactive("")
    topic: reactive[str] = reactive("")
    #: Conversations with unread activity (see :mod:`imchat.tui.hotlist`).
    hotlist: reactive[Text] = reactive(Text)

    def __init__(self, server: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.server = server
        #: The clock retry_at is measured on (replaceable, so screenshots are repeatable).
        self.clock: Callable[[], float] = time.monotonic

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        if self.state is State.RECONNECTING and self.retry_at is not None:
            self.refresh_text()

    def state_text(self) -> Text:
        state = self.state
        if state is State.CONNECTED:
            return Text("● connected", style=Style(color="green", bold=True))
        if state is State.CONNECTING:
            return Text("◌ connecting…", style=Style(color="yellow"))
        if state is State.RECONNECTING:
            if self.retry_at is None:
                return Text("◌ reconnecting…", style=Style(color="yellow", bold=True))
            left = max(0, math.ceil(self.retry_at - self.clock()))
            return Text(f"◌ reconnecting in {left}s", style=Style(color="yellow", bold=True))
        return Text("○ offline", style=Style(color="red", bold=True))

    def refresh_text(self) -> None:
        self.update(self.fitted(self.size.width))

    def fitted(self, width: int) -> Text:
        """The most detailed line that fits ``width``; the topic takes what is left.

        Narrow terminals fold the side panes away, so this bar is then the only sign of
        activity elsewhere: why the connection dropped, the server address and the state's
        words go before the state's dot and the hotlist do.
        """
        bar = Text("  │  ", style="grey42")
        brand = Text(" imchat ", style=Style(color="black", bgcolor="cyan", bold=True))
        nick = Text(f" {clean(self.nick)}", style=Style(bold=True))
        server = Text(f" @ {clean(self.server)}", style=Style(color="grey62"))
        state = self.state_text()
        dot = Text(state.plain[:1], style=state.get_style_at_offset(self.app.console, 0))
        hot = [bar, self.hotlist] if self.hotlist.plain else []
        layouts = [
            Text.assemble(brand, nick, server, "  ", state, *hot),
            Text.assemble(brand, nick, "  ", state, *hot),
            Text.assemble(brand, nick, " ", dot, *hot),
            Text.assemble(nick, " ", dot, *hot),
        ]
        if self.state is not State.CONNECTED and self.reason:
            # The reason takes what the full line leaves, cut short if need be.
            reason = clean(self.reason).replace("\n", " ")
            room = len(reason) if width <= 0 else width - layouts[0].cell_len - len("  ()")
            if room >= MIN_REASON:
                if len(reason) > room:
                    reason = reason[: room - 1] + "…"
                told = Text.assemble(state, Text(f"  ({reason})", style="grey50"))
                layouts.insert(0, Text.assemble(brand, nick, server, "  ", told, *hot))
        line = next((t for t in layouts if width <= 0 or t.cell_len <= width), layouts[-1])
        if self.topic and (width <= 0 or width - line.cell_len >= MIN_TOPIC):
            topic = Text(clean(self.topic).replace("\n", " "), style=Style(italic=True))
            line = Text.assemble(line, bar, topic)
        line.no_wrap, line.overflow = True, "ellipsis"
        return line

    def on_resize(self) -> None:
        self.refresh_text()

    def watch_state(self) -> None:
        self.refresh_text()

    def watch_retry_at(self) -> None:
        self.refresh_text()

    def watch_nick(self) -> None:
        self.refresh_text()

    def watch_topic(self) -> None:
        self.refresh_text()

    def watch_reason(self) -> None:
        self.refresh_text()

    def watch_hotlist(self) -> None:
        self.refresh_text()
