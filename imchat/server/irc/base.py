"""What every IRC command handler shares: its session, the per-client state and the ways to
answer (numerics, errors, history batches)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from imchat.protocol import ProtocolError

from . import translate as tr
from .lines import Line, format_parts

if TYPE_CHECKING:
    from .session import IrcSession

#: Limits announced in RPL_ISUPPORT. Most messages one ``CHATHISTORY`` request returns:
CHATHISTORY_MAX = 500
NICKLEN = 32
CHANNELLEN = 65  # "#" and 64 characters


class Channel:
    """A room this client was shown as joined, with what it knows of it."""

    __slots__ = ("topic",)

    def __init__(self, topic: str) -> None:
        self.topic = topic


class CommandBase:
    """The state and answering helpers the command mixins (registration, history) share."""

    def __init__(self, session: IrcSession) -> None:
        self.s = session
        self.reg_nick: str | None = None
        self.reg_user = False
        self.password: str | None = None
        self.cap_open = False
        self.sasl_started = False
        self.sasl_done = False
        self.away: str | None = None
        self.channels: dict[str, Channel] = {}
        self._batches = 0

    # -- helpers ---------------------------------------------------------------------------

    @property
    def nick(self) -> str:
        return self.s.nick_or_star

    def out(self, data: bytes) -> None:
        self.s.send_line(data)

    def num(self, code: str, *params: str) -> None:
        self.out(tr.numeric(code, self.nick, *params))

    def error(self, exc: ProtocolError, command: str, target: str = "*") -> None:
        self.out(tr.error_lines(exc.code, exc.message, command, target, self.nick))

    def new_batch(self) -> str:
        self._batches += 1
        return f"b{self._batches}"

    def need(self, line: Line, count: int) -> bool:
        if len(line.params) < count or not line.params[count - 1]:
            self.num("461", line.command, "Not enough parameters")
            return False
        return True

    def show_topic(self, room: str, code: int) -> None:
        channel = self.channels.get(room)
        if channel is None:
            return
        if channel.topic:
            self.num("332", "#" + room, channel.topic)
        elif code == 331:
            self.num("331", "#" + room, "No topic is set")

    def names(self, room: str, members: list[str] | None) -> None:
        if members is not None:
            nicks = sorted(members, key=str.lower)
            chunk: list[str] = []
            for nick in nicks:
                chunk.append(nick)
                if len(chunk) == 40:
                    self.num("353", "=", "#" + room, " ".join(chunk))
                    chunk = []
            if chunk:
                self.num("353", "=", "#" + room, " ".join(chunk))
        self.num("366", "#" + room, "End of /NAMES list")

    def emit_history(
        self, target: str, messages: list[dict[str, Any]], *, prefix_time: bool = False
    ) -> None:
        batch = self.new_batch() if "batch" in self.s.caps else None
        if batch is not None:
            self.out(format_parts("BATCH", ["+" + batch, "chathistory", target], tr.SERVER))
        for event in messages:
            if prefix_time and "text" in event and "ts" in event:
                stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event["ts"]))
                event = {**event, "text": f"[{stamp}] {event['text']}"}
            for data in tr.event_lines(event, self.s.variant, batch):
                self.out(data)
        if batch is not None:
            self.out(format_parts("BATCH", ["-" + batch], tr.SERVER))
