"""An in-memory imchat server, just enough of the contract to test client policy.

It lets a test do what a real server makes awkward: lose an ``ok`` after storing a message,
keep only the last N messages of history, or cut every connection at a chosen moment. No
sockets are involved, so it runs on whatever loop the test (or the Textual app) uses.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import msgspec

from imchat.client import ConnectionClosed, ServerError
from imchat.protocol import nick_key, normalize_room

Message = dict[str, Any]


@dataclass
class FakeRoom:
    topic: str = ""
    members: dict[str, str] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    seq: int = 0


class FakeServer:
    def __init__(self, *, history_keep: int | None = None, clock: Any = None) -> None:
        self.rooms: dict[str, FakeRoom] = {}
        self.dms: dict[tuple[str, str], list[Message]] = {}
        self.dm_seq: dict[tuple[str, str], int] = {}
        self.announcements: list[Message] = []
        self.cids: dict[tuple[str, str], Message] = {}
        self.undelivered: dict[str, list[Message]] = {}
        self.known: dict[str, str] = {}
        self.connections: list[FakeConnection] = []
        self.history_keep = history_keep
        self.down = False
        #: Store the next say/dm from this nick, then drop the connection instead of ``ok``.
        self.lose_ok_for: str | None = None
        self.requests: list[tuple[str, Message]] = []
        #: Swallow pings without a pong, like a peer that vanished without closing.
        self.ignore_pings = False
        self._clock = itertools.count(1_700_000_000) if clock is None else clock
        self.connected = asyncio.Event()

    def ts(self) -> float:
        return float(next(self._clock))

    async def connect(self) -> FakeConnection:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        conn = FakeConnection(self)
        self.connections.append(conn)
        return conn

    def online(self) -> dict[str, str]:
        return {nick_key(c.nick): c.nick for c in self.connections if c.nick and not c.closed}

    def sessions_of(self, nick: str) -> list[FakeConnection]:
        key = nick_key(nick)
        return [c for c in self.connections if c.nick and nick_key(c.nick) == key and not c.closed]

    def broadcast(self, message: Message, to: list[FakeConnection] | None = None) -> None:
        targets = to if to is not None else [c for c in self.connections if c.nick]
        for conn in targets:
            if not conn.closed:
                conn.events.put_nowait(dict(message))

    def drop_all(self) -> None:
        """Cut every connection without a word, as a crashed server would."""
        for conn in list(self.connections):
            conn.abort()

    def restart(self) -> None:
        """Send everyone ``shutting_down`` and close, keeping the stored data."""
        for conn in list(self.connections):
            if not conn.closed:
                conn.closed_error = {
                    "type": "error",
                    "code": "shutting_down",
                    "message": "server restarting",
                }
                conn.events.put_nowait(conn.closed_error)
                conn.abort()

    def _kept(self, messages: list[Message]) -> list[Message]:
        if self.history_keep is None:
            return messages
        return messages[-self.history_keep :]

    # -- request handling --------------------------------------------------------------------

    def handle(self, conn: FakeConnection, kind: str, f: Message) -> Message:
        self.requests.append((kind, f))
        if kind == "ping":
            return {"type": "pong"}
        if kind == "hello":
            nick = f["nick"]
            if self.sessions_of(nick) and nick != "admin":  # admin: an account, many sessions
                raise ServerError("nick_taken", "nick in use")
            was_online = bool(self.sessions_of(nick))
            conn.nick = nick
            self.known[nick_key(nick)] = nick
            if not was_online:
                self.broadcast({"type": "online", "nick": nick, "ts": self.ts()})
            for dm in self.undelivered.pop(nick_key(nick), []):
                conn.after_reply.append(dm)
            return {
                "type": "welcome",
                "proto": 1,
                "nick": nick,
                "server": "fake/1.0",
                "max_frame": 65536,
                "max_text": 4000,
                "admin": nick == "admin",
            }
        me = conn.nick
        if me is None:
            raise ServerError("hello_required", "say hello first")
        if kind == "users":
            return {"type": "ok", "users": list(self.online().values())}
        if kind == "join":
            name = normalize_room(f["room"])
            room = self.rooms.setdefault(name, FakeRoom())
            new = nick_key(me) not in room.members
            room.members[nick_key(me)] = me
            if new:
                conn.after_reply.append(
                    ("room", name, {"type": "joined", "room": name, "nick": me, "ts": self.ts()})
                )
            return {
                "type": "ok",
                "room": name,
                "topic": room.topic,
                "members": list(room.members.values()),
                "last_seq": room.seq,
            }
        if kind == "part":
            name = normalize_room(f["room"])
            room = self.rooms.get(name)
            if room is None or nick_key(me) not in room.members:
                raise ServerError("not_in_room", f"not in #{name}")
            event = {"type": "parted", "room": name, "nick": me, "ts": self.ts()}
            conn.after_reply.append(("room", name, event))
            conn.after_reply.append(("leave", name, me))
            return {"type": "ok"}
        if kind in ("say", "dm", "announce"):
            cid = f.get("cid")
            if cid is not None and (nick_key(me), cid) in self.cids:
                stored = self.cids[(nick_key(me), cid)]
                return {"type": "ok", "seq": stored["seq"], "ts": stored["ts"]}
            stored, targets = self._store(me, kind, f)
            if cid is not None:
                self.cids[(nick_key(me), cid)] = stored
            if self.lose_ok_for is not None and nick_key(self.lose_ok_for) == nick_key(me):
                self.lose_ok_for = None
                for target in targets:
                    if target is not conn:
                        self.broadcast(stored, [target])
                conn.abort()
                raise ConnectionClosed()
            conn.after_reply.append(("to", targets, stored))
            return {"type": "ok", "seq": stored["seq"], "ts": stored["ts"]}
        if kind == "history":
            if "room" in f:
                name = normalize_room(f["room"])
                if name not in self.rooms:
                    raise ServerError("no_such_room", name)
                messages = self.rooms[name].messages
            elif "with" in f:
                messages = self.dms.get(_pair(me, f["with"]), [])
            else:
                messages = self.announcements
            messages = self._kept(messages)
            limit = min(f.get("limit", 50), 500)
            after, before = f.get("after"), f.get("before")
            if after is not None:
                sel = [
                    m
                    for m in messages
                    if m["seq"] > after and (before is None or m["seq"] < before)
                ][:limit]
            else:
                sel = [m for m in messages if before is None or m["seq"] < before][-limit:]
            return {"type": "ok", "messages": [dict(m) for m in sel]}
        if kind == "topic":
            name = normalize_room(f["room"])
            room = self.rooms.get(name)
            if room is None or nick_key(me) not in room.members:
                raise ServerError("not_in_room", f"not in #{name}")
            room.topic = f["text"]
            conn.after_reply.append(
                (
                    "room",
                    name,
                    {"type": "topic", "room": name, "topic": f["text"], "by": me, "ts": self.ts()},
                )
            )
            return {"type": "ok"}
        if kind == "rooms":
            return {
                "type": "ok",
                "rooms": [
                    {"room": n, "count": len(r.members), "topic": r.topic}
                    for n, r in sorted(self.rooms.items())
                ],
            }
        raise ServerError("unknown_type", kind)

    def _store(self, me: str, kind: str, f: Message) -> tuple[Message, list[FakeConnection]]:
        if kind == "say":
            name = normalize_room(f["room"])
            room = self.rooms.get(name)
            if room is None or nick_key(me) not in room.members:
                raise ServerError("not_in_room", f"not in #{name}")
            room.seq += 1
            stored = {
                "type": "msg",
                "room": name,
                "seq": room.seq,
                "ts": self.ts(),
                "from": me,
                "text": f["text"],
            }
            if f.get("kind"):
                stored["kind"] = f["kind"]
            room.messages.append(stored)
            targets = [c for m in room.members.values() for c in self.sessions_of(m)]
            return stored, targets
        if kind == "dm":
            to = f["to"]
            if nick_key(to) not in self.known:
                raise ServerError("no_such_user", to)
            pair = _pair(me, to)
            self.dm_seq[pair] = self.dm_seq.get(pair, 0) + 1
            stored = {
                "type": "dm",
                "from": me,
                "to": self.known[nick_key(to)],
                "seq": self.dm_seq[pair],
                "ts": self.ts(),
                "text": f["text"],
            }
            self.dms.setdefault(pair, []).append(stored)
            if not self.sessions_of(to):
                self.undelivered.setdefault(nick_key(to), []).append(stored)
            return stored, self.sessions_of(me) + (
                self.sessions_of(to) if nick_key(to) != nick_key(me) else []
            )
        stored = {
            "type": "announce",
            "from": me,
            "seq": len(self.announcements) + 1,
            "ts": self.ts(),
            "text": f["text"],
        }
        self.announcements.append(stored)
        return stored, [c for c in self.connections if c.nick and not c.closed]

    def server_say(self, nick: str, room: str, text: str) -> Message:
        """A message from a user not connected through a client (for scripted tests)."""
        r = self.rooms.setdefault(room, FakeRoom())
        r.seq += 1
        stored = {
            "type": "msg",
            "room": room,
            "seq": r.seq,
            "ts": self.ts(),
            "from": nick,
            "text": text,
        }
        r.messages.append(stored)
        self.broadcast(stored, [c for m in r.members.values() for c in self.sessions_of(m)])
        return stored


def _pair(a: str, b: str) -> tuple[str, str]:
    x, y = sorted((nick_key(a), nick_key(b)))
    return (x, y)


class FakeConnection:
    """Implements the :class:`imchat.client.Connection` surface over a :class:`FakeServer`."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.nick: str | None = None
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.welcome: Message | None = None
        self.closed_error: Message | None = None
        self.after_reply: list[Any] = []
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def hello(
        self,
        nick: str,
        *,
        password: str | None = None,
        token: str | None = None,
        client: str | None = None,
    ) -> Message:
        self.welcome = await self.request("hello", proto=1, nick=nick)
        self.server.connected.set()
        return self.welcome

    async def request(self, message: Any, /, **fields: Any) -> Message:
        if not isinstance(message, str):  # a typed request, as the client library sends
            fields = msgspec.to_builtins(message)
            message = fields.pop("type")
            fields.pop("id", None)
        await asyncio.sleep(0)  # a request is never answered synchronously
        if self.closed:
            raise ConnectionClosed(self.closed_error)
        if message == "ping" and self.server.ignore_pings:
            self.server.requests.append(("ping", fields))
            await self._closed.wait()
            raise ConnectionClosed(self.closed_error)
        reply = self.server.handle(self, message, fields)
        for item in self.after_reply:
            self._after(item)
        self.after_reply.clear()
        return reply

    def _after(self, item: Any) -> None:
        server = self.server
        if isinstance(item, dict):
            self.events.put_nowait(item)
        elif item[0] == "room":
            room = server.rooms[item[1]]
            server.broadcast(
                item[2], [c for m in room.members.values() for c in server.sessions_of(m)]
            )
        elif item[0] == "leave":
            server.rooms[item[1]].members.pop(nick_key(item[2]), None)
        elif item[0] == "to":
            server.broadcast(item[2], item[1])

    async def next_event(self, timeout: float | None = None) -> Message:
        get = asyncio.ensure_future(self.events.get())
        closed = asyncio.ensure_future(self._closed.wait())
        done, _ = await asyncio.wait(
            {get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        closed.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if not done:
            raise TimeoutError
        raise ConnectionClosed(self.closed_error)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.closed:
            return
        self._closed.set()
        nick = self.nick
        if nick and not self.server.sessions_of(nick):
            for name, room in self.server.rooms.items():
                if nick_key(nick) in room.members:
                    room.members.pop(nick_key(nick))
                    self.server.broadcast(
                        {
                            "type": "parted",
                            "room": name,
                            "nick": nick,
                            "reason": "quit",
                            "ts": self.server.ts(),
                        },
                        [c for m in room.members.values() for c in self.server.sessions_of(m)],
                    )
            self.server.broadcast({"type": "offline", "nick": nick, "ts": self.server.ts()})
