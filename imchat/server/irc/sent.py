"""The messages an IRC client sent itself, so that without ``echo-message`` only those are
kept from it.

An IRC client without ``echo-message`` shows what it sends as it sends it; the server must
not send it back. But its user may have other sessions (a native client, a second IRC
client): what the user says there is news to this client. The author of an event cannot
tell these apart, the stream and ``seq`` of this client's own ``ok`` replies can, and the
contract sends a reply before any event its request caused.
"""

from __future__ import annotations

from typing import Any

from imchat.protocol import ProtocolError, nick_key, normalize_room

#: Messages remembered at most: a reply whose event never comes (a reaction added twice
#: answers the first one's seq and sends nothing) must not make the set grow without end.
MAX_REMEMBERED = 1024


def stream_key(target: str) -> str:
    """The key of the stream an IRC target names: ``#room``, ``@nick`` (a DM) or ``$``."""
    if target.startswith("#"):
        return "#" + normalize_room(target)
    if target.startswith("$"):
        return "$"
    return "@" + nick_key(target)


def event_stream_key(event: dict[str, Any], me: str) -> str:
    """The key of the stream a native ``msg``, ``dm`` or ``announce`` event belongs to, as
    seen by the user ``me`` (a nick key)."""
    kind = event.get("type")
    if kind == "msg":
        return "#" + str(event.get("room"))
    if kind == "dm":
        sender, to = nick_key(str(event.get("from"))), nick_key(str(event.get("to")))
        return "@" + (to if sender == me else sender)
    return "$"


class SentHere:
    """Stream and ``seq`` of each message this client sent, until its event comes by."""

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], None] = {}

    def add(self, target: str, reply: dict[str, Any]) -> None:
        """Remember the message an ``ok`` reply to a request for ``target`` stored."""
        seq = reply.get("seq")
        if type(seq) is not int or seq <= 0:
            return  # nothing stored (a reaction removed that was not there)
        try:
            key = stream_key(target)
        except ProtocolError:
            return
        self._sent[(key, seq)] = None
        if len(self._sent) > MAX_REMEMBERED:
            del self._sent[next(iter(self._sent))]

    def take(self, stream: str, seq: object) -> bool:
        """True, once, if this client sent message ``seq`` of ``stream`` itself."""
        if type(seq) is not int:
            return False
        try:
            del self._sent[(stream, seq)]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._sent)
