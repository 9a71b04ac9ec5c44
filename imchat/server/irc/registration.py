"""Registration: CAP negotiation, NICK/USER/PASS, SASL PLAIN, the welcome burst.

The native ``hello`` is sent once the client has a nick and a user and has ended CAP
negotiation, or at once by SASL (the account name is the nick); registration then completes at
``CAP END``. A token is written ``token:<token>`` in PASS or SASL; anything else is the
account's password.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import imchat
from imchat.protocol import ErrorCode, ProtocolError

from . import translate as tr
from .base import CHANNELLEN, CHATHISTORY_MAX, NICKLEN, Channel, CommandBase
from .lines import Line, format_parts

if TYPE_CHECKING:
    from .session import Reply


class Registration(CommandBase):
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
                self.s.caps_changed()
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
        replied: asyncio.Future[None] = self.s.hub.loop.create_future()

        def on_reply(reply: Reply) -> None:
            # Called as the reply is sent: auth_failed is fatal, so the numeric must go first.
            if isinstance(reply, ProtocolError):
                if reply.code == ErrorCode.AUTH_FAILED:
                    self.num("904" if sasl else "464", reply.message)
                else:
                    self.error(reply, "NICK", nick)
            result.append(not isinstance(reply, ProtocolError))
            if not replied.done():
                replied.set_result(None)

        async def run() -> None:
            try:
                await self.s.request(body, on_reply)
            finally:
                if not replied.done():
                    replied.set_result(None)  # no reply: the connection is closing

        # After its welcome the hub hands the user its queued DMs and waits until they are
        # written, which for a client still registering is after CAP END (see
        # ``IrcSession.wait_written``): registration goes on meanwhile, past the reply.
        self.s.hub.spawn(run())
        await replied
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
        rooms = self.joined_elsewhere()
        s.finish_registration()
        await self.describe_joined(rooms)

    def joined_elsewhere(self) -> list[str]:
        """The rooms the user is in already (joined from another session), shown as joined
        with a JOIN line each before any event of theirs can reach this client; membership
        belongs to the user, so their messages come here too."""
        user = self.s.user
        # (A room already in ``channels`` was shown by a ``joined`` event held since a SASL
        # login.)
        rooms = sorted(set(user.rooms) - self.channels.keys()) if user is not None else []
        for room in rooms:
            self.channels[room] = Channel("")
            self.out(format_parts("JOIN", ["#" + room], tr.source(self.nick)))
        return rooms

    async def describe_joined(self, rooms: list[str]) -> None:
        """Topic and NAMES of the rooms :meth:`joined_elsewhere` showed, as after a JOIN.
        Read from the store and the fan-out directly: a native ``join`` would tell the same
        but count against the message rate limit, once per room."""
        hub = self.s.hub
        for room in rooms:
            info = await hub.store.room(room)
            members = await hub.fanout.members(room)
            channel = self.channels.get(room)
            if channel is None or self.s.closing:
                continue  # parted meanwhile
            channel.topic = info.topic if info is not None else channel.topic
            self.show_topic(room, 332)
            self.names(room, members)

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
            f"TOPICLEN={config.max_topic}",
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


def decode_sasl_plain(data: str) -> tuple[str, str] | None:
    """``authzid NUL authcid NUL password`` (base64) to (authcid, password)."""
    try:
        raw = base64.b64decode(data, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    parts = raw.split("\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]
