"""``imchat send``: deliver messages from scripts, and return only once each is acknowledged."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from imchat.protocol import Announce, Dm, History, Join, Ping, React, Request, Say

from .connection import Connection, ConnectionClosed, Message, ServerError
from .resume import ResumeStore, remember_welcome
from .retry import Requester, request_retrying
from .session import ANNOUNCEMENTS, ConvKey, stream_fields

T = TypeVar("T")

KEEPALIVE = 30.0
#: Times one request may be carried over to another connection before its loss is final.
MAX_MOVES = 3

Redial = Callable[[], Awaitable[Connection]]


@dataclass(frozen=True, slots=True)
class Target:
    """Exactly one of: a room, a user, or everyone (an announcement)."""

    room: str | None = None
    to: str | None = None
    everyone: bool = False
    #: Revision 3: each message answers this seq of the same stream.
    reply_to: int | None = None
    #: Revision 3: the text is an emoji added to the message with this seq.
    react: int | None = None
    #: Join ``room`` even if it does not exist yet (a join creates it).
    create_room: bool = False

    def request(self, text: str, cid: str) -> Say | Dm | Announce | React:
        reply_to = None if self.everyone else self.reply_to
        if self.react is not None:
            return React(seq=self.react, emoji=text, cid=cid, **stream_fields(self.conv))
        if self.room is not None:
            return Say(room=self.room, text=text, cid=cid, reply_to=reply_to)
        if self.to is not None:
            return Dm(to=self.to, text=text, cid=cid, reply_to=reply_to)
        return Announce(text=text, cid=cid)

    @property
    def conv(self) -> ConvKey:
        if self.room is not None:
            return ConvKey.room(self.room)
        if self.to is not None:
            return ConvKey.dm(self.to)
        return ANNOUNCEMENTS


class NotUtf8(Exception):
    """A text to send is not UTF-8: refused here, since the protocol cannot carry it and
    imchat never alters a text silently (the locale's decoding would have made it surrogates,
    or failed with a traceback)."""


def utf8_text(text: str, where: str) -> str:
    """``text`` itself if it encodes as UTF-8 (an argument the locale decoded with
    ``surrogateescape`` may not), else :class:`NotUtf8`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotUtf8(f"bad_text: {where} is not UTF-8 (it was not sent)") from None
    return text


def lost_in_passing(exc: ConnectionClosed) -> bool:
    """A connection that ended without a word, or with ``shutting_down``: the service may
    still be there (another node, or this one restarted). Any other last word is final."""
    return exc.error is None or exc.error.get("code") == "shutting_down"


class Link:
    """The connection ``imchat send`` speaks through.

    With several servers (``--host a,b``, the nodes of one service) a connection lost in
    passing is replaced by one to the next that answers, greeted again (``hello``, ``join``),
    and the request in flight is sent again: a message with its ``cid``, so it is stored once
    whichever node had it. Without ``redial`` a lost connection is the caller's error.
    """

    def __init__(
        self,
        conn: Connection,
        greet: Callable[[Connection], Awaitable[None]],
        redial: Redial | None = None,
    ) -> None:
        self.conn = conn
        self._greet = greet
        self._redial = redial

    async def begin(self, greet_first: Callable[[Connection], Awaitable[None]]) -> None:
        """The first greeting, moved to the next server like any request: a node that
        shuts down or dies while it greets us is passed for the next."""
        await self._through(greet_first, regreet=False)

    async def request(self, message: Request | str, /, **fields: Any) -> Message:
        return await self._through(lambda conn: conn.request(message, **fields))

    async def _through(
        self, action: Callable[[Connection], Awaitable[T]], *, regreet: bool = True
    ) -> T:
        moves = 0
        while True:
            try:
                if moves:
                    await self._move(regreet=regreet)
                return await action(self.conn)
            except ConnectionClosed as exc:
                if self._redial is None or not lost_in_passing(exc) or moves == MAX_MOVES:
                    raise
            moves += 1

    async def _move(self, *, regreet: bool) -> None:
        assert self._redial is not None
        self.conn.abort()
        try:
            self.conn = await self._redial()
        except (OSError, TimeoutError):
            raise ConnectionClosed() from None
        if regreet:
            await self._greet(self.conn)


async def stdin_lines(link: Link) -> AsyncIterator[str]:
    """Lines from standard input as they arrive, pinging the server while we wait.

    Read as bytes and decoded as UTF-8 whatever the locale says (a C locale would decode
    with ``surrogateescape``, a UTF-8 one fail inside the reader thread).
    """
    number = 0
    while True:
        read = asyncio.ensure_future(asyncio.to_thread(sys.stdin.buffer.readline))
        while not read.done():
            done, _ = await asyncio.wait({read}, timeout=KEEPALIVE)
            if not done:
                await link.request(Ping())
        raw = read.result()
        if not raw:
            return
        number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NotUtf8(
                f"bad_text: line {number} of standard input is not UTF-8 (it and what "
                "follows were not sent)"
            ) from None
        yield line.rstrip("\r\n")


async def _iterate(texts: Iterable[str]) -> AsyncIterator[str]:
    for text in texts:
        yield text


async def send_one(conn: Requester, target: Target, text: str) -> dict[str, object]:
    """One message with a new ``cid``, sent again after ``rate_limited`` or ``internal``
    (through a :class:`Link`, also after a lost connection)."""
    return await request_retrying(conn, target.request(text, uuid.uuid4().hex))


async def send_messages(
    conn: Connection,
    nick: str,
    target: Target,
    texts: Iterable[str] | None,
    *,
    token: str | None = None,
    password: str | None = None,
    resumes: ResumeStore | None = None,
    redial: Redial | None = None,
) -> int:
    """Send ``texts`` (or standard input's lines when None); return how many were acked.

    Empty lines from standard input are skipped: the protocol refuses empty text. A guest
    nick's ``resume`` is kept in ``resumes``, so the next run continues the same identity.
    With ``redial`` (several servers), a lost connection is replaced (see :class:`Link`).
    """

    async def greet(conn: Connection, *, first: bool = False) -> None:
        await guest_hello(conn, nick, resumes, token=token, password=password, client="imchat-send")
        if target.room is None:
            return
        if first and not target.create_room:
            # A typo must not create a room nobody reads: every message would be acknowledged,
            # and seen by no one. ``history`` of a room that does not exist is no_such_room.
            await conn.request(History(room=target.room, limit=1))
        await request_retrying(conn, Join(room=target.room))

    link = Link(conn, greet, redial)
    sent = 0
    try:
        await link.begin(lambda conn: greet(conn, first=True))
        source = stdin_lines(link) if texts is None else _iterate(texts)
        async for text in source:
            if texts is None and not text:
                continue
            await send_one(link, target, utf8_text(text, "TEXT"))
            sent += 1
        await link.conn.close()
    finally:
        if link.conn is not conn:
            link.conn.abort()
    return sent


async def guest_hello(
    conn: Connection,
    nick: str,
    resumes: ResumeStore | None,
    *,
    token: str | None = None,
    password: str | None = None,
    client: str | None = None,
) -> dict[str, object]:
    """``hello`` with the kept ``resume`` for this server and nick (if any); keep the new one.

    A ``nick_taken`` after sending a resume means the identity it named is gone (another
    holds the nick now): the stale secret is forgotten.
    """
    resume = None
    if resumes is not None and token is None and password is None:
        resume = resumes.get(conn.host, conn.port, nick)
    try:
        welcome = await conn.hello(
            nick, token=token, password=password, client=client, resume=resume
        )
    except ServerError as exc:
        if exc.code == "nick_taken" and resume is not None and resumes is not None:
            resumes.forget(conn.host, conn.port, nick)
        raise
    remember_welcome(resumes, conn.host, conn.port, nick, welcome)
    return welcome


def held_nick_advice(nick: str, message: str) -> str:
    """The one line ``imchat send`` prints when a guest identity holds the nick."""
    return (
        f"nick_taken: {message}. A guest nick stays with the machine that took it; "
        f"scripts on other machines (CI runners) should use an account token "
        f"(imchat user add {nick} --no-password; imchat token create --user {nick}; "
        f"then --token or IMCHAT_TOKEN)."
    )
