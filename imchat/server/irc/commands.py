"""What each IRC command means in native requests, and what native events mean on IRC.

One :class:`Commands` per connection. Handlers ask the hub through their session
(``request``/``ask``) and write numerics; :meth:`Commands.event_out` turns an incoming native
event into this client's bytes, reusing the server-wide translation where the lines are the
same for every recipient and keeping the little per-client state IRC needs (the channels
shown as joined and their topics; members are asked of the hub when needed, so a room of N
IRC users costs N entries, not N per session).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from imchat.protocol import ErrorCode, ProtocolError, nick_key

from . import translate as tr
from .base import Channel
from .history import History
from .lines import Line, format_parts
from .registration import Registration
from .sent import event_stream_key

if TYPE_CHECKING:
    from .session import IrcSession, Reply

#: Messages replayed on JOIN to clients that did not ask for ``draft/chathistory``.
JOIN_REPLAY = 50
#: A JOIN refused ``rate_limited`` waits for the bucket and is tried again, at most this long
#: per channel: IRC clients autojoin their channels in one burst and never retry a refusal.
JOIN_LAG = 10.0
#: Commands a client may send before it is registered.
BEFORE_REGISTRATION = frozenset(
    {"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"}
)


class Commands(Registration, History):
    def __init__(self, session: IrcSession) -> None:
        super().__init__(session)
        self._handlers: dict[str, Callable[[Line], Awaitable[None]]] = {
            "CAP": self.on_cap,
            "NICK": self.on_nick,
            "USER": self.on_user,
            "PASS": self.on_pass,
            "AUTHENTICATE": self.on_authenticate,
            "PING": self.on_ping,
            "PONG": self.on_pong,
            "QUIT": self.on_quit,
            "JOIN": self.on_join,
            "PART": self.on_part,
            "PRIVMSG": self.on_message,
            "NOTICE": self.on_message,
            "TOPIC": self.on_topic,
            "NAMES": self.on_names,
            "LIST": self.on_list,
            "WHO": self.on_who,
            "WHOIS": self.on_whois,
            "MODE": self.on_mode,
            "AWAY": self.on_away,
            "MOTD": self.on_motd,
            "CHATHISTORY": self.on_chathistory,
            "TAGMSG": self.on_tagmsg,
            "REDACT": self.on_redact,
        }

    async def dispatch(self, line: Line) -> None:
        handler = self._handlers.get(line.command)
        if not self.s.registered and line.command not in BEFORE_REGISTRATION:
            if handler is None:
                self.num("421", line.command, "Unknown command")
            else:
                self.num("451", "You have not registered")
            return
        if handler is None:
            self.num("421", line.command, "Unknown command")
            return
        await handler(line)

    # -- rooms -----------------------------------------------------------------------------

    async def on_join(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        if line.params[0] == "0":
            for room in list(self.channels):
                await self.part(room)
            return
        # A channel named twice in one JOIN (``#a,#A``) is joined once, as IRC servers do.
        targets = dict.fromkeys(line.params[0].split(","))
        seen: set[str] = set()
        for target in targets:
            if not target.startswith("#"):
                self.num("403", target, "No such channel (channels start with #)")
                continue
            if target.lower() in seen:
                continue
            seen.add(target.lower())
            joined: list[tuple[str, int]] = []

            lag: list[float] = []

            def on_reply(
                reply: Reply,
                target: str = target,
                joined: list[tuple[str, int]] = joined,
                lag: list[float] = lag,
            ) -> None:
                if isinstance(reply, ProtocolError):
                    if reply.code == ErrorCode.RATE_LIMITED:
                        wait = self.join_lag(reply, lag)
                        if wait is not None:
                            lag.append(wait)
                            return
                    self.error(reply, "JOIN", target)
                    return
                room = str(reply["room"])
                if room not in self.channels:
                    self.out(format_parts("JOIN", ["#" + room], tr.source(self.nick)))
                    joined.append((room, int(reply.get("last_seq", 0))))
                    if self.replays(joined[0][1]):
                        # What is said from now on comes after the replay (see ``replay``).
                        self.s.hold_room(room)
                self.channels[room] = Channel(str(reply["topic"]))
                self.show_topic(room, 332)
                self.names(room, [str(m) for m in reply["members"]])

            while True:
                waited = len(lag)
                await self.s.request({"type": "join", "room": target}, on_reply)
                if len(lag) == waited:
                    break
                # Fake lag, as IRC servers do: this client's next command waits too.
                await asyncio.sleep(lag[-1])
            if joined and self.replays(joined[0][1]):
                await self.replay(*joined[0])

    def join_lag(self, refusal: ProtocolError, lag: list[float]) -> float | None:
        """How long a rate-limited JOIN waits before it is tried again (None: refuse it).

        The refusal's own hint if it has one, else one token of the session's bucket; never
        past ``JOIN_LAG`` for one channel, so a budget that does not refill (a room-creation
        cap) is still reported."""
        wait = refusal.retry_after
        if wait is None:
            rate = self.s.bucket.rate
            wait = 1 / rate if rate > 0 else None
        if wait is None or sum(lag) + wait > JOIN_LAG:
            return None
        return wait

    def replays(self, last_seq: int) -> bool:
        """Whether a first JOIN shows what was said before it (not to chathistory clients)."""
        return last_seq > 0 and "draft/chathistory" not in self.s.caps

    async def replay(self, room: str, last_seq: int) -> None:
        """The messages before the join (later ones arrive live: none is shown twice). The
        room's live events are held from the join's reply until the replay is out, so that
        what is said while the store is read comes after what was said before."""
        body = {"type": "history", "room": room, "limit": JOIN_REPLAY, "before": last_seq + 1}
        try:
            reply = await self.s.ask(body)
            if isinstance(reply, ProtocolError) or not reply.get("messages"):
                return
            self.emit_history(
                "#" + room, reply["messages"], prefix_time="server-time" not in self.s.caps
            )
        finally:
            self.s.release_room(room)

    async def members(self, room: str) -> list[str] | None:
        """The room's members, if this client is in it. Read from the fan-out: a repeated
        native ``join`` would tell the same but count against the message rate limit, once
        per NAMES or WHO (irssi sends a WHO for every channel it joins)."""
        if room not in self.channels:
            return None
        return await self.s.hub.fanout.members(room)

    async def part(self, target: str) -> None:
        reply = await self.s.ask({"type": "part", "room": target})
        if isinstance(reply, ProtocolError):
            self.error(reply, "PART", target if target.startswith("#") else "#" + target)

    async def on_part(self, line: Line) -> None:
        if self.need(line, 1):
            for target in line.params[0].split(","):
                await self.part(target)

    async def on_topic(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[0]
        if len(line.params) == 1:
            room = target.lstrip("#").lower()
            if room in self.channels:
                self.show_topic(room, 331)
                return
            try:
                async for info in self.rooms():
                    if info["room"] == room:
                        if info["topic"]:
                            self.num("332", target, info["topic"])
                        else:
                            self.num("331", target, "No topic is set")
                        return
            except ProtocolError as exc:
                self.error(exc, "TOPIC", target)
                return
            self.num("403", target, "No such channel")
            return
        reply = await self.s.ask({"type": "topic", "room": target, "text": line.params[1]})
        if isinstance(reply, ProtocolError):
            self.error(reply, "TOPIC", target)

    async def on_names(self, line: Line) -> None:
        targets = line.param(0).split(",") if line.params else ["#" + r for r in self.channels]
        for target in targets:
            room = target.lstrip("#").lower()
            self.names(room, await self.members(room))

    async def rooms(self) -> AsyncIterator[dict[str, Any]]:
        """Every room, page by page (``rooms`` answers ``more`` when it left some out)."""
        body: dict[str, Any] = {"type": "rooms"}
        while True:
            reply = await self.s.ask(dict(body))
            if isinstance(reply, ProtocolError):
                raise reply
            page = list(reply.get("rooms", []))
            for info in page:
                yield info
            if not reply.get("more") or not page:
                return
            body["after"] = page[-1]["room"]

    async def on_list(self, line: Line) -> None:
        self.num("321", "Channel", "Users  Name")
        try:
            async for info in self.rooms():
                self.num("322", "#" + info["room"], str(info["count"]), info["topic"])
        except ProtocolError as exc:
            self.error(exc, "LIST")
        self.num("323", "End of /LIST")

    # -- people ----------------------------------------------------------------------------

    def who_line(self, channel: str, nick: str) -> None:
        here = "G" if nick.lower() == self.nick.lower() and self.away else "H"
        self.num("352", channel, nick, tr.HOST, tr.SERVER, nick, here, f"0 {nick}")

    async def online(self) -> dict[str, str]:
        """Who is online, by nick key; a refused ``users`` (the read budget) is raised."""
        reply = await self.s.ask({"type": "users"})
        if isinstance(reply, ProtocolError):
            raise reply
        return {n.lower(): n for n in reply.get("users", [])}

    async def on_who(self, line: Line) -> None:
        mask = line.param(0, "*")
        if mask.startswith("#"):
            for nick in await self.members(mask[1:].lower()) or []:
                self.who_line(mask, nick)
        else:
            try:
                found = (await self.online()).get(mask.lower())
            except ProtocolError as exc:
                self.error(exc, "WHO", mask)
                found = None
            if found is not None:
                self.who_line("*", found)
        self.num("315", mask, "End of /WHO list")

    async def on_whois(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[-1]
        try:
            nick = (await self.online()).get(target.lower())
        except ProtocolError as exc:
            self.error(exc, "WHOIS", target)
            self.num("318", target, "End of /WHOIS list")
            return
        if nick is None:
            self.num("401", target, "No such nick")
        else:
            self.num("311", nick, nick, tr.HOST, "*", nick)
            self.num("312", nick, tr.SERVER, "imchat")
            if nick.lower() == self.nick.lower():
                if self.channels:
                    self.num("319", nick, " ".join("#" + r for r in sorted(self.channels)))
                if self.away:
                    self.num("301", nick, self.away)
        self.num("318", target, "End of /WHOIS list")

    async def on_mode(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[0]
        if target.startswith("#"):
            if len(line.params) == 1:
                self.num("324", target, "+nt")
            elif line.params[1].lstrip("+") == "b":
                self.num("368", target, "End of channel ban list")
            else:
                self.num("482", target, "Channel modes cannot be changed on imchat")
        elif target.lower() == self.nick.lower():
            self.num("221", "+i")
        else:
            self.num("502", "Cannot change mode for other users")

    async def on_away(self, line: Line) -> None:
        self.away = line.param(0) or None
        if self.away:
            self.num("306", "You have been marked as being away")
        else:
            self.num("305", "You are no longer marked as being away")

    # -- messages --------------------------------------------------------------------------

    def message_payloads(self, line: Line) -> list[bytes]:
        """The native requests for a PRIVMSG/NOTICE (several targets: several requests)."""
        if not line.params or not line.params[0]:
            self.num("411", f"No recipient given ({line.command})")
            return []
        if len(line.params) < 2 or not line.params[1]:
            self.num("412", "No text to send")
            return []
        if _bad_reply_tag(line):
            self.refuse_reply_tag(line)
            return []
        text = line.params[1]
        body: dict[str, Any] = {}
        if text.startswith("\x01ACTION "):
            # The closing \x01 may be left out (the CTCP spec allows it).
            action = text[8:-1] if text.endswith("\x01") else text[8:]
            if action:
                text, body["kind"] = action, "action"
        reply_to = _reply_to(line)
        answer = {"reply_to": reply_to} if reply_to is not None else {}
        out = []
        for target in line.params[0].split(","):
            if body and not target.startswith("#"):
                # imchat has actions in rooms only (a DM or an announcement has no kind):
                # refused rather than sent as plain words (the TUI's /me says the same).
                message = "actions (/me) work in channels only; nothing was sent"
                self.out(tr.fail(line.command, "INVALID_TEXT", message, target))
                continue
            if target.startswith("#"):
                request = {"type": "say", "room": target, "text": text, **body, **answer}
            elif target.startswith("$"):
                request = {"type": "announce", "text": text}
            else:
                request = {"type": "dm", "to": target, "text": text, **answer}

            def on_reply(reply: Reply, target: str = target, cmd: str = line.command) -> None:
                if isinstance(reply, ProtocolError):
                    self.error(reply, cmd, target)
                else:
                    self.s.note_sent(target, reply)

            out.append(self.s.payload(request, on_reply))
        return out

    async def on_tagmsg(self, line: Line) -> None:
        """A reaction (``+draft/react`` with ``+draft/reply``) becomes a native ``react``.

        Other tag-only messages (typing notifications) are dropped quietly, since a client
        sends them as a matter of course.
        """
        emoji, seq = line.tags.get("+draft/react"), _reply_to(line)
        if emoji and line.params and line.params[0] and _bad_reply_tag(line):
            self.refuse_reply_tag(line)
            return
        if not emoji or seq is None or not line.params or not line.params[0]:
            return
        target = line.params[0]
        request = {"type": "react", **_stream(target), "seq": seq, "emoji": emoji}

        def on_reply(reply: Reply) -> None:
            if isinstance(reply, ProtocolError):
                self.error(reply, "TAGMSG", target)
            else:
                self.s.note_sent(target, reply)

        await self.s.hub.handle_batch(self.s, [self.s.payload(request, on_reply)])

    def refuse_reply_tag(self, line: Line) -> None:
        """A ``+draft/reply`` that cannot name a message: refused as REDACT refuses such a
        msgid (``UNKNOWN_MSGID``), and nothing is sent (not a reply to nothing)."""
        value = line.tags.get("+draft/reply", "")
        message = f"No such message to reply to: {value!r}"[:200]
        self.out(tr.fail(line.command, "UNKNOWN_MSGID", message, line.params[0], value))

    async def on_redact(self, line: Line) -> None:
        """``REDACT <target> <msgid> [:reason]`` (draft/message-redaction) deletes a message.

        The msgid is the stream's seq; the reason is not kept (native deletes carry none).
        """
        if not self.need(line, 2):
            return
        target, msgid = line.params[0], line.params[1]
        if not msgid.isdigit() or len(msgid) > 18:
            self.out(tr.fail("REDACT", "UNKNOWN_MSGID", "No such message", target, msgid))
            return
        request = {"type": "delete", **_stream(target), "seq": int(msgid)}

        def on_reply(reply: Reply) -> None:
            if isinstance(reply, ProtocolError):
                self.error(reply, "REDACT", target)
            else:
                self.s.note_sent(target, reply)

        await self.s.hub.handle_batch(self.s, [self.s.payload(request, on_reply)])

    async def on_message(self, line: Line) -> None:
        payloads: list[bytes | ProtocolError] = list(self.message_payloads(line))
        if payloads:
            await self.s.hub.handle_batch(self.s, payloads)

    # -- events ----------------------------------------------------------------------------

    def event_out(self, entry: tr.Translated) -> bytes | None:
        """This client's bytes for a native event (None: nothing to show)."""
        event = entry.event
        kind = event.get("type")
        me = self.s.user.key if self.s.user is not None else ""
        if kind in ("msg", "dm", "announce"):
            # Without echo-message, what this client sent is not sent back to it; what its
            # user sent from another session is.
            if (
                not self.s.echo
                and nick_key(str(event.get("from", ""))) == me
                and self.s.sent.take(event_stream_key(event, me), event.get("seq"))
            ):
                return None
            return entry.for_variant(self.s.variant)
        if kind == "joined":
            room, nick = event["room"], event["nick"]
            if nick.lower() == me:
                if room in self.channels:
                    return None
                self.channels[room] = Channel("")  # joined from another session
            return entry.for_variant(self.s.variant)
        if kind == "parted":
            room, nick = event["room"], event["nick"]
            if nick.lower() == me and self.channels.pop(room, None) is None:
                return None
            return entry.for_variant(self.s.variant)
        if kind == "topic":
            if event["room"] in self.channels:
                self.channels[event["room"]].topic = event["topic"]
            return entry.for_variant(self.s.variant)
        if kind == "error":
            code = str(event.get("code", "internal")).upper()
            return tr.fail("*", code, str(event.get("message", "")))
        return None


def _stream(target: str) -> dict[str, Any]:
    """The native stream fields an IRC target names: ``#room``, ``$*`` or a nick."""
    if target.startswith("#"):
        return {"room": target}
    if target.startswith("$"):
        return {"announcements": True}
    return {"with": target}


def _bad_reply_tag(line: Line) -> bool:
    """A ``+draft/reply`` tag is there but names no msgid of ours (one is a stream's seq)."""
    return "+draft/reply" in line.tags and _reply_to(line) is None


def _reply_to(line: Line) -> int | None:
    """The ``msgid`` (a stream seq) a ``+draft/reply`` tag names, if it is one of ours."""
    value = line.tags.get("+draft/reply", "")
    return int(value) if value.isdigit() and len(value) < 19 else None
