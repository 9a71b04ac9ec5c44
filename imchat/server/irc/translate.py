"""Native events and errors to IRC lines, and the server's IRC constants.

Pure functions of their inputs (no session state), so a fan-out frame is translated once per
capability variant and the same bytes go to every IRC recipient (see :class:`FrameCache`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from imchat.protocol import HEADER_SIZE, ErrorCode

from .lines import MAX_LINE, format_parts, inert, split_text

SERVER = "imchat"
HOST = "imchat"
#: Capabilities offered in ``CAP LS``; values are shown to ``CAP LS 302`` clients.
CAPABILITIES: dict[str, str] = {
    "sasl": "PLAIN",
    "server-time": "",
    "message-tags": "",
    "echo-message": "",
    "batch": "",
    "draft/chathistory": "",
    "multi-prefix": "",
    "draft/message-redaction": "",
}
#: Variant bits: which tags a session's lines carry, and which IRCv3 forms it reads.
TIME = 1
MSGTAGS = 2
REDACT = 4
VARIANTS = 8

_decoder = msgspec.json.Decoder()


def source(nick: str) -> str:
    return f"{nick}!{nick}@{HOST}"


def iso_time(ts: float) -> str:
    whole = int(ts)
    millis = round((ts - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_iso_time(value: str) -> float | None:
    """``2026-11-29T00:18:39.123Z`` to Unix seconds, None if it is not one."""
    import calendar

    try:
        main, _, frac = value.rstrip("Z").partition(".")
        parsed = time.strptime(main, "%Y-%m-%dT%H:%M:%S")
        seconds = float(calendar.timegm(parsed))
        return seconds + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


def event_tags(event: dict[str, Any], variant: int, batch: str | None = None) -> dict[str, str]:
    tags: dict[str, str] = {}
    if batch is not None:
        tags["batch"] = batch
    if variant & TIME and "ts" in event:
        tags["time"] = iso_time(event["ts"])
    if variant & MSGTAGS and "seq" in event:
        tags["msgid"] = str(event["seq"])
    return tags


def text_lines(
    command: str, src: str, target: str, text: str, tags: dict[str, str], action: bool = False
) -> list[bytes]:
    """``PRIVMSG``/``NOTICE`` lines for a text, split so that each fits 512 bytes."""
    overhead = len(f":{src} {command} {target} :\r\n".encode())
    if action:
        overhead += len("\x01ACTION \x01")
    out = []
    for piece in split_text(text, max(MAX_LINE - overhead, 16)):
        body = f"\x01ACTION {piece}\x01" if action else piece
        out.append(format_parts(command, [target, body], src, tags))
    return out


def message_lines(
    event: dict[str, Any], target: str, variant: int, tags: dict[str, str]
) -> list[bytes]:
    """A stored message (``msg``, ``dm``, ``announce``) for IRC, revision 3 included.

    IRCv3 forms where the client took ``message-tags``: a reply carries ``+draft/reply``,
    a reaction is a ``TAGMSG`` with ``+draft/react``, and a delete a ``REDACT`` where the
    client took ``draft/message-redaction``. Edits have no settled IRC form: they arrive as
    text that says what happened (as do the others without those capabilities).
    """
    src, text, kind = source(event["from"]), str(event["text"]), event.get("kind")
    command = "NOTICE" if event.get("type") == "announce" else "PRIVMSG"
    about = event.get("target")
    if kind == "delete" and variant & REDACT:
        return [format_parts("REDACT", [target, str(about)], src, tags)]
    if kind is None or kind == "action":
        if variant & MSGTAGS and event.get("reply_to") is not None:
            tags = {**tags, "+draft/reply": str(event["reply_to"])}
        return text_lines(command, src, target, text, tags, action=kind == "action")
    if kind == "react" and variant & MSGTAGS:
        tags = {**tags, "+draft/react": text, "+draft/reply": str(about)}
        return [format_parts("TAGMSG", [target], src, tags)]
    # The emoji of a reaction stands inside the server's words: made inert (see ``inert``).
    said = {
        "edit": f"(edited message {about}) {text}",
        "delete": f"(deleted message {about})",
        "react": f"(reacted {inert(text)} to message {about})",
        "unreact": f"(took back {inert(text)} from message {about})",
    }.get(str(kind), text)
    return text_lines("NOTICE" if kind != "edit" else command, src, target, said, tags)


def event_lines(event: dict[str, Any], variant: int, batch: str | None = None) -> list[bytes]:
    """The lines any IRC recipient gets for a native event (empty: nothing to show)."""
    kind = event.get("type")
    tags = event_tags(event, variant, batch)
    if kind in ("msg", "dm", "announce"):
        target = {"msg": "#" + str(event.get("room")), "dm": event.get("to"), "announce": "$*"}
        return message_lines(event, str(target[kind]), variant, tags)
    if kind == "joined":
        return [format_parts("JOIN", ["#" + event["room"]], source(event["nick"]), tags)]
    if kind == "parted":
        params = ["#" + event["room"]]
        if event.get("reason"):
            params.append(str(event["reason"]))
        return [format_parts("PART", params, source(event["nick"]), tags)]
    if kind == "topic":
        return [
            format_parts("TOPIC", ["#" + event["room"], event["topic"]], source(event["by"]), tags)
        ]
    return []  # online/offline: IRC shows presence through JOIN/PART/QUIT only


@dataclass(slots=True)
class Translated:
    """One native frame, decoded once, with its lines per variant built on demand."""

    frame: bytes
    event: dict[str, Any]
    #: Lines per variant (the index: TIME | MSGTAGS | REDACT bits), built on first use.
    lines: list[bytes | None] = field(default_factory=lambda: [None] * VARIANTS)
    #: A room message: the same lines for every recipient, except that its author sees it only
    #: with echo-message. The fast path of a broadcast (see ``IrcSession.send``).
    simple: bool = False
    #: The author's nick key, for a simple event.
    author: str = ""

    def for_variant(self, variant: int) -> bytes:
        out = self.lines[variant]
        if out is None:
            out = self.lines[variant] = b"".join(event_lines(self.event, variant))
        return out


class FrameCache:
    """The last few frames translated: a broadcast hands every recipient the same bytes
    object, so each is decoded and formatted once, not once per IRC session."""

    __slots__ = ("_entries", "_next", "last", "last_frame", "size")

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: list[Translated | None] = [None] * size
        self._next = 0
        #: The frame translated last and its translation: a fan-out loop hits it every time.
        self.last_frame: bytes = b""
        self.last = Translated(b"", {})

    def get(self, frame: bytes) -> Translated:
        if frame is self.last_frame:
            return self.last
        for entry in self._entries:
            if entry is not None and entry.frame is frame:
                self.last_frame, self.last = frame, entry
                return entry
        event = _decoder.decode(memoryview(frame)[HEADER_SIZE:])
        if not isinstance(event, dict):
            event = {}
        entry = Translated(frame, event)
        if "id" in event:
            return entry  # a reply goes to one session: nothing to share, and it may be large
        if event.get("type") == "msg":
            entry.simple = True
            entry.author = str(event.get("from", "")).lower()
        self._entries[self._next] = entry
        self._next = (self._next + 1) % self.size
        self.last_frame, self.last = frame, entry
        return entry


def numeric(code: str, nick: str, *params: str) -> bytes:
    return format_parts(code, [nick or "*", *params], SERVER)


def fail(command: str, code: str, message: str, *context: str) -> bytes:
    return format_parts("FAIL", [command, code, *context, message], SERVER)


def error_lines(code: ErrorCode, message: str, command: str, target: str, nick: str) -> bytes:
    """One native error as the IRC reply a client of ``command`` expects."""
    if command == "REDACT":  # draft/message-redaction's codes
        redact = {
            ErrorCode.FORBIDDEN: "REDACT_FORBIDDEN",
            ErrorCode.NO_SUCH_MESSAGE: "UNKNOWN_MSGID",
            ErrorCode.NOT_IN_ROOM: "INVALID_TARGET",
            ErrorCode.NO_SUCH_ROOM: "INVALID_TARGET",
            ErrorCode.BAD_ROOM: "INVALID_TARGET",
            ErrorCode.NO_SUCH_USER: "INVALID_TARGET",
        }.get(code)
        if redact is not None:
            return fail(command, redact, message, target)
    if code == ErrorCode.NO_SUCH_MESSAGE:
        # The msgid of +draft/reply (PRIVMSG, TAGMSG) names no message: REDACT's code too.
        return fail(command, "UNKNOWN_MSGID", message, target)
    if code == ErrorCode.NICK_TAKEN:
        return numeric("433", nick, target, message)
    if code == ErrorCode.BAD_NICK:
        # A message to a target that cannot be a nick: no such nick. 432 answers NICK.
        return numeric("401" if command in ("PRIVMSG", "NOTICE") else "432", nick, target, message)
    if code == ErrorCode.AUTH_FAILED:
        return numeric("464", nick, message)
    if code in (ErrorCode.BAD_ROOM, ErrorCode.NO_SUCH_ROOM):
        return numeric("403", nick, target, message)
    if code == ErrorCode.NOT_IN_ROOM:
        if command in ("PRIVMSG", "NOTICE"):
            return numeric("404", nick, target, message)
        return numeric("442", nick, target, message)
    if code == ErrorCode.NO_SUCH_USER:
        return numeric("401", nick, target, message)
    if code == ErrorCode.FORBIDDEN:
        return numeric("481", nick, message)
    if code == ErrorCode.BAD_TEXT:
        return fail(command, "INVALID_TEXT", message, target)
    if code == ErrorCode.RATE_LIMITED:
        return fail(command, "RATE_LIMITED", message, target)
    return fail(command, str(code).upper(), message, target)
