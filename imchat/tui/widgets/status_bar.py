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


class StatusBar(Static):
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
        parts = [
            Text(" imchat ", style=Style(color="black", bgcolor="cyan", bold=True)),
            Text(f" {clean(self.nick)}", style=Style(bold=True)),
            Text(f" @ {clean(self.server)}  ", style=Style(color="grey62")),
            self.state_text(),
        ]
        if self.state is not State.CONNECTED and self.reason:
            parts.append(Text(f"  ({clean(self.reason)})", style=Style(color="grey50")))
        if self.hotlist.plain:
            parts.append(Text("  │  ", style="grey42"))
            parts.append(self.hotlist)
        if self.topic:
            parts.append(Text("  │  ", style="grey42"))
            parts.append(Text(clean(self.topic).replace("\n", " "), style=Style(italic=True)))
        self.update(Text.assemble(*parts, no_wrap=True, overflow="ellipsis"))

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
