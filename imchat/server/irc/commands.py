"""What each IRC command means in native requests, and what native events mean on IRC.

One :class:`Commands` per connection. Handlers ask the hub through their session
(``request``/``ask``) and write numerics; :meth:`Commands.event_out` turns an incoming native
event into this client's bytes, reusing the server-wide translation where the lines are the
same for every recipient and keeping the little per-client state IRC needs (the channels
shown as joined and their topics; members are asked of the hub when needed, so a room of N
IRC users costs N entries, not N per session).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import imchat
from imchat.protocol import ErrorCode, ProtocolError

from . import translate as tr
from .lines import Line, format_parts

if TYPE_CHECKING:
    from .session import IrcSession, Reply

#: Messages replayed on JOIN to clients that did not ask for ``draft/chathistory``.
JOIN_REPLAY = 50
#: Most messages one ``CHATHISTORY`` request returns (``CHATHISTORY=`` in ISUPPORT).
CHATHISTORY_MAX = 500
NICKLEN = 32
CHANNELLEN = 65  # "#" and 64 characters
#: Commands a client may send before it is registered.
BEFORE_REGISTRATION = frozenset(
    {"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"}
)


class Channel:
    __slots__ = ("topic",)

    def __init__(self, topic: str) -> None:
        self.topic = topic


class Commands:
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
        }

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

    def need(self, line: Line, count: int) -> bool:
        if len(line.params) < count or not line.params[count - 1]:
            self.num("461", line.command, "Not enough parameters")
            return False
        return True

    # -- registration ----------------------------------------------------------------------

    async def on_cap(self, line: Line) -> None:
        sub = line.param(0).upper()
        if sub == "LS":
            if not self.s.registered:
                self.cap_open = True
            v302 = line.param(1).isdigit() and int(line.param(1)) >= 302
            caps = " ".join(f"{k}={v}" if v and v302 else k for k, v in tr.CAPABILITIES.items())
            self.out(format_parts("CAP", [self.nick, "LS", caps], tr.SERVER))
        elif sub == "REQ":
            if not self.s.registered:
                self.cap_open = True
            wanted = line.param(1).split()
            names = [w.lstrip("-") for w in wanted]
            if all(n in tr.CAPABILITIES for n in names) and wanted:
                for w in wanted:
                    if w.startswith("-"):
                        self.s.caps.discard(w[1:])
                    else:
                        self.s.caps.add(w)
                self.s.echo = "echo-message" in self.s.caps
                self.s.variant = (tr.TIME if "server-time" in self.s.caps else 0) | (
                    tr.MSGTAGS if "message-tags" in self.s.caps else 0
                )
                self.out(format_parts("CAP", [self.nick, "ACK", line.param(1)], tr.SERVER))
            else:
                self.out(format_parts("CAP", [self.nick, "NAK", line.param(1)], tr.SERVER))
        elif sub == "LIST":
            self.out(
                format_parts("CAP", [self.nick, "LIST", " ".join(sorted(self.s.caps))], tr.SERVER)
            )
        elif sub == "END":
            self.cap_open = False
            await self.try_register()
        else:
            self.num("410", sub or "*", "Invalid CAP command")

    async def on_nick(self, line: Line) -> None:
        if not line.params or not line.params[0]:
            self.num("431", "No nickname given")
            return
        nick = line.params[0]
        if self.s.registered:
            if nick.lower() != self.nick.lower():
                self.num("447", "Changing nicknames is not supported on imchat")
            return
        self.reg_nick = nick
        await self.try_register()

    async def on_user(self, line: Line) -> None:
        if self.s.registered:
            self.num("462", "You may not reregister")
            return
        if not self.need(line, 4):
            return
        self.reg_user = True
        await self.try_register()

    async def on_pass(self, line: Line) -> None:
        if self.s.registered:
            self.num("462", "You may not reregister")
            return
        if self.need(line, 1):
            self.password = line.params[0]

    async def on_authenticate(self, line: Line) -> None:
        arg = line.param(0)
        if self.s.registered or self.sasl_done:
            self.num("907", "You have already authenticated using SASL")
            return
        if arg == "*":
            self.sasl_started = False
            self.num("906", "SASL authentication aborted")
            return
        if not self.sasl_started:
            if arg.upper() != "PLAIN":
                self.num("908", "PLAIN", "are available SASL mechanisms")
                self.num("904", "SASL authentication failed")
                return
            self.sasl_started = True
            self.out(format_parts("AUTHENTICATE", ["+"]))
            return
        self.sasl_started = False
        from .session import decode_sasl_plain

        creds = decode_sasl_plain(arg)
        if creds is None:
            self.num("904", "SASL authentication failed: malformed PLAIN response")
            return
        account, secret = creds
        if await self.hello(account, secret, sasl=True):
            self.sasl_done = True
            nick = self.nick
            self.num("900", tr.source(nick), nick, f"You are now logged in as {nick}")
            self.num("903", "SASL authentication successful")

    async def hello(self, nick: str, secret: str | None, *, sasl: bool = False) -> bool:
        body: dict[str, Any] = {"type": "hello", "proto": 1, "nick": nick, "client": "irc"}
        if secret is not None:
            if secret.startswith("token:"):
                body["token"] = secret[len("token:") :]
            else:
                body["password"] = secret
        result: list[bool] = []

        def on_reply(reply: Reply) -> None:
            # Called as the reply is sent: auth_failed is fatal, so the numeric must go first.
            if isinstance(reply, ProtocolError):
                if reply.code == ErrorCode.AUTH_FAILED:
                    self.num("904" if sasl else "464", reply.message)
                else:
                    self.error(reply, "NICK", nick)
            result.append(not isinstance(reply, ProtocolError))

        await self.s.request(body, on_reply)
        return result == [True]

    async def try_register(self) -> None:
        s = self.s
        if s.registered or self.cap_open or not self.reg_user:
            return
        if s.user is None and self.reg_nick is None:
            return
        if s.user is None and not await self.hello(str(self.reg_nick), self.password):
            self.reg_nick = None
            return
        if s.user is None or s.closing:
            return
        self.burst()
        s.finish_registration()

    def burst(self) -> None:
        s = self.s
        config = s.hub.config
        version = f"imchat-{imchat.__version__}"
        self.num("001", f"Welcome to imchat, {self.nick}")
        self.num("002", f"Your host is {tr.SERVER}, running {version}")
        self.num("003", "This server speaks IRC as a face of the imchat protocol")
        self.num("004", tr.SERVER, version, "i", "nt")
        tokens = [
            "CASEMAPPING=ascii",
            "CHANTYPES=#",
            f"CHANNELLEN={CHANNELLEN}",
            f"NICKLEN={NICKLEN}",
            f"TOPICLEN={config.max_text}",
            f"CHATHISTORY={CHATHISTORY_MAX}",
            "MSGREFTYPES=msgid,timestamp",
            "NETWORK=imchat",
            "PREFIX=()",
            "CHANMODES=b,,,nt",
            "UTF8ONLY",
        ]
        self.num("005", *tokens, "are supported by this server")
        self.motd()

    def motd(self) -> None:
        motd = self.s.hub.config.motd
        if not motd:
            self.num("422", "MOTD File is missing")
            return
        self.num("375", f"- {tr.SERVER} Message of the day -")
        for text in motd.splitlines() or [""]:
            self.num("372", f"- {text}")
        self.num("376", "End of /MOTD command")

    async def on_motd(self, line: Line) -> None:
        self.motd()

    async def on_ping(self, line: Line) -> None:
        self.out(format_parts("PONG", [tr.SERVER, line.param(0, tr.SERVER)], tr.SERVER))

    async def on_pong(self, line: Line) -> None:
        pass

    async def on_quit(self, line: Line) -> None:
        reason = line.param(0, "Client quit")
        self.s.close(format_parts("ERROR", [f"Closing link: Quit: {reason}"]))

    # -- rooms -----------------------------------------------------------------------------

    async def on_join(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        if line.params[0] == "0":
            for room in list(self.channels):
                await self.part(room)
            return
        for target in line.params[0].split(","):
            if not target.startswith("#"):
                self.num("403", target, "No such channel (channels start with #)")
                continue
            joined: list[tuple[str, int]] = []

            def on_reply(
                reply: Reply, target: str = target, joined: list[tuple[str, int]] = joined
            ) -> None:
                if isinstance(reply, ProtocolError):
                    self.error(reply, "JOIN", target)
                    return
                room = str(reply["room"])
                if room not in self.channels:
                    self.out(format_parts("JOIN", ["#" + room], tr.source(self.nick)))
                    joined.append((room, int(reply.get("last_seq", 0))))
                self.channels[room] = Channel(str(reply["topic"]))
                self.show_topic(room, 332)
                self.names(room, [str(m) for m in reply["members"]])

            await self.s.request({"type": "join", "room": target}, on_reply)
            if joined and joined[0][1] and "draft/chathistory" not in self.s.caps:
                await self.replay(*joined[0])

    async def replay(self, room: str, last_seq: int) -> None:
        """The messages before the join (later ones arrive live: none is shown twice)."""
        body = {"type": "history", "room": room, "limit": JOIN_REPLAY, "before": last_seq + 1}
        reply = await self.s.ask(body)
        if isinstance(reply, ProtocolError) or not reply.get("messages"):
            return
        self.emit_history(
            "#" + room, reply["messages"], prefix_time="server-time" not in self.s.caps
        )

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

    def show_topic(self, room: str, code: int) -> None:
        channel = self.channels.get(room)
        if channel is None:
            return
        if channel.topic:
            self.num("332", "#" + room, channel.topic)
        elif code == 331:
            self.num("331", "#" + room, "No topic is set")

    async def members(self, room: str) -> list[str] | None:
        """The room's members, if this client is in it (a repeated join changes nothing)."""
        if room not in self.channels:
            return None
        reply = await self.s.ask({"type": "join", "room": room})
        if isinstance(reply, ProtocolError):
            return None
        return [str(m) for m in reply.get("members", [])]

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
            reply = await self.s.ask({"type": "rooms"})
            if isinstance(reply, ProtocolError):
                self.error(reply, "TOPIC", target)
                return
            for info in reply.get("rooms", []):
                if info["room"] == room:
                    if info["topic"]:
                        self.num("332", target, info["topic"])
                    else:
                        self.num("331", target, "No topic is set")
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

    async def on_list(self, line: Line) -> None:
        reply = await self.s.ask({"type": "rooms"})
        if isinstance(reply, ProtocolError):
            self.error(reply, "LIST")
            return
        self.num("321", "Channel", "Users  Name")
        for info in reply.get("rooms", []):
            self.num("322", "#" + info["room"], str(info["count"]), info["topic"])
        self.num("323", "End of /LIST")

    # -- people ----------------------------------------------------------------------------

    def who_line(self, channel: str, nick: str) -> None:
        here = "G" if nick.lower() == self.nick.lower() and self.away else "H"
        self.num("352", channel, nick, tr.HOST, tr.SERVER, nick, here, f"0 {nick}")

    async def online(self) -> dict[str, str]:
        reply = await self.s.ask({"type": "users"})
        if isinstance(reply, ProtocolError):
            return {}
        return {n.lower(): n for n in reply.get("users", [])}

    async def on_who(self, line: Line) -> None:
        mask = line.param(0, "*")
        if mask.startswith("#"):
            for nick in await self.members(mask[1:].lower()) or []:
                self.who_line(mask, nick)
        else:
            found = (await self.online()).get(mask.lower())
            if found is not None:
                self.who_line("*", found)
        self.num("315", mask, "End of /WHO list")

    async def on_whois(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[-1]
        nick = (await self.online()).get(target.lower())
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
        text = line.params[1]
        body: dict[str, Any] = {}
        if text.startswith("\x01ACTION ") and text.endswith("\x01") and len(text) > 9:
            text, body["kind"] = text[8:-1], "action"
        out = []
        for target in line.params[0].split(","):
            if target.startswith("#"):
                request = {"type": "say", "room": target, "text": text, **body}
            elif target.startswith("$"):
                request = {"type": "announce", "text": text}
            else:
                request = {"type": "dm", "to": target, "text": text}

            def on_reply(reply: Reply, target: str = target, cmd: str = line.command) -> None:
                if isinstance(reply, ProtocolError):
                    self.error(reply, cmd, target)

            out.append(self.s.payload(request, on_reply))
        return out

    async def on_tagmsg(self, line: Line) -> None:
        """Tag-only messages (typing, reactions) have no imchat form yet: dropped quietly,
        since a client sends them as a matter of course."""

    async def on_message(self, line: Line) -> None:
        payloads: list[bytes | ProtocolError] = list(self.message_payloads(line))
        if payloads:
            await self.s.hub.handle_batch(self.s, payloads)

    # -- history ---------------------------------------------------------------------------

    async def on_chathistory(self, line: Line) -> None:
        sub = line.param(0).upper()
        if sub == "TARGETS":
            await self.history_targets(line)
            return
        if sub not in ("LATEST", "BEFORE", "AFTER", "BETWEEN"):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Unknown subcommand", sub or "*"))
            return
        target = line.param(1)
        refs = line.params[2:-1]
        try:
            limit = min(int(line.params[-1]), CHATHISTORY_MAX)
        except (ValueError, IndexError):
            limit = 0
        if not target or limit < 1 or len(refs) != (2 if sub == "BETWEEN" else 1):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Bad parameters", sub))
            return
        stream: dict[str, Any] = {"room": target} if target.startswith("#") else {"with": target}
        parsed = [_ref(r) for r in refs]
        if any(p is None for p in parsed) or (sub != "LATEST" and refs[0] == "*"):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Bad message reference", sub))
            return
        body: dict[str, Any] = {"type": "history", **stream, "limit": limit}
        by_time: list[tuple[str, float]] = []
        ok_refs = [p for p in parsed if p is not None]
        if sub == "BETWEEN" and ok_refs[0][0] == ok_refs[1][0] and ok_refs[0][1] > ok_refs[1][1]:
            ok_refs.reverse()  # BETWEEN may name its bounds in either order
        for (kind, value), role in zip(ok_refs, _roles(sub), strict=False):
            if kind == "timestamp" or (kind == "msgid" and sub == "LATEST"):
                # LATEST wants the newest messages after the reference: filter the latest page.
                by_time.append((role, value) if kind == "timestamp" else ("after_seq", value))
            elif kind == "msgid":
                body[role] = int(value)
        if by_time:
            body["limit"] = CHATHISTORY_MAX  # filter one page by time (see docs/irc.md)
        reply = await self.s.ask(body)
        if isinstance(reply, ProtocolError):
            code = (
                "INVALID_TARGET"
                if reply.code
                in (
                    ErrorCode.NO_SUCH_ROOM,
                    ErrorCode.NO_SUCH_USER,
                    ErrorCode.BAD_ROOM,
                    ErrorCode.BAD_NICK,
                )
                else "MESSAGE_ERROR"
            )
            self.out(tr.fail("CHATHISTORY", code, reply.message, sub, target))
            return
        messages: list[dict[str, Any]] = list(reply.get("messages", []))
        for role, ts in by_time:
            if role == "after_seq":
                messages = [m for m in messages if m.get("seq", 0) > ts]
            elif role == "after":
                messages = [m for m in messages if m.get("ts", 0) > ts]
            else:
                messages = [m for m in messages if m.get("ts", 0) < ts]
        if by_time:
            keep_first = sub in ("AFTER", "BETWEEN")
            messages = messages[:limit] if keep_first else messages[-limit:]
        self.emit_history(target, messages)

    async def history_targets(self, line: Line) -> None:
        lo, hi = (_ref(r) for r in (line.param(1), line.param(2)))
        if lo is None or hi is None or lo[0] != "timestamp" or hi[0] != "timestamp":
            self.out(
                tr.fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS needs timestamps", "TARGETS")
            )
            return
        low, high = sorted((float(lo[1]), float(hi[1])))
        found: list[tuple[float, str]] = []
        for room in sorted(self.channels):
            reply = await self.s.ask({"type": "history", "room": room, "limit": 1})
            if isinstance(reply, ProtocolError) or not reply.get("messages"):
                continue
            ts = float(reply["messages"][-1].get("ts", 0))
            if low < ts < high:
                found.append((ts, "#" + room))
        batch = self.new_batch() if "batch" in self.s.caps else None
        if batch is not None:
            self.out(format_parts("BATCH", ["+" + batch, "draft/chathistory-targets"], tr.SERVER))
        tags = {"batch": batch} if batch is not None else {}
        for ts, target in sorted(found):
            stamp = "timestamp=" + tr.iso_time(ts)
            self.out(format_parts("CHATHISTORY", ["TARGETS", target, stamp], tr.SERVER, tags))
        if batch is not None:
            self.out(format_parts("BATCH", ["-" + batch], tr.SERVER))

    # -- events ----------------------------------------------------------------------------

    def event_out(self, entry: tr.Translated) -> bytes | None:
        """This client's bytes for a native event (None: nothing to show)."""
        event = entry.event
        kind = event.get("type")
        me = self.s.user.key if self.s.user is not None else ""
        if kind == "msg" or kind == "dm":
            if (
                event.get("from", "").lower() == me
                and "echo-message" not in self.s.caps
                and event.get("to", "").lower() != me
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
        if kind == "announce":
            return entry.for_variant(self.s.variant)
        if kind == "error":
            code = str(event.get("code", "internal")).upper()
            return tr.fail("*", code, str(event.get("message", "")))
        return None


def _roles(sub: str) -> list[str]:
    return {"LATEST": ["after"], "BEFORE": ["before"], "AFTER": ["after"]}.get(
        sub, ["after", "before"]
    )


def _ref(text: str) -> tuple[str, float] | None:
    """``msgid=12`` / ``timestamp=…`` / ``*`` to (kind, value)."""
    if text == "*":
        return ("none", 0.0)
    kind, _, value = text.partition("=")
    if kind == "msgid" and value.isdigit():
        return ("msgid", float(value))
    if kind == "timestamp":
        ts = tr.parse_iso_time(value)
        return None if ts is None else ("timestamp", ts)
    return None
