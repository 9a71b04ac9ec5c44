"""Revision 3 on the client: replies, edits, deletes, reactions, read markers, typing, search.

:class:`MessageBook` is pure bookkeeping: it folds the edit, delete and reaction messages of a
conversation into the messages they target, so a UI shows "(edited)", "message deleted" and
reaction counts without knowing the protocol. :class:`Features` binds it to a running
:class:`~imchat.client.session.ChatSession`: typed calls for each request, read markers
restored at every connect and kept in step with the user's other sessions, typing
notifications throttled on this side too. Nothing here imports Textual.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from imchat.protocol import Delete, Edit, Mark, Markers, React, Search, Typing, nick_key

from .connection import Message, ServerError
from .session import (
    ANNOUNCEMENTS,
    ChatSession,
    ConvKey,
    ConvKind,
    Gap,
    HistoryReset,
    MessagesAdded,
    NotConnected,
    Pending,
    ServerEvent,
    SessionEvent,
    State,
    StateChanged,
    dm_partner,
    stream_fields,
)

log = logging.getLogger(__name__)

#: The server forwards one ``typing`` per user and stream per 3 s; sending more is waste.
TYPING_INTERVAL = 3.0
#: Seconds between two marks of one conversation while more keep coming (a flood read on
#: screen): each is a store write, and the server budgets them with the reads (``history``)
#: a user may need next, so a flood must not spend that budget on markers.
MARK_INTERVAL = 1.0
#: How long a "bob is typing" lasts without a new notification.
TYPING_SHOWN_FOR = 6.0
#: Messages kept per conversation (as many as the TUI's log shows); older ones are dropped.
MAX_VIEWS = 20_000
#: Changes kept waiting for a target that has not been loaded (yet), in all.
MAX_WAITING = 5_000
#: Kinds of message that change another one (the contract's ``target``).
TARGETING_KINDS = frozenset({"edit", "delete", "react", "unreact"})


# -- pure bookkeeping ---------------------------------------------------------------------------


@dataclass(slots=True)
class MessageView:
    """A plain or action message as it stands after every edit, delete and reaction."""

    seq: int
    sender: str
    text: str
    kind: str | None = None
    reply_to: int | None = None
    edited: bool = False
    deleted: bool = False
    deleted_by: str | None = None
    #: emoji -> nick keys of the users who reacted with it (insertion order kept)
    reactions: dict[str, dict[str, str]] = field(default_factory=dict)

    def reaction_counts(self) -> list[tuple[str, int]]:
        return [(emoji, len(users)) for emoji, users in self.reactions.items() if users]

    def reacted(self, nick: str, emoji: str) -> bool:
        return nick_key(nick) in self.reactions.get(emoji, {})


class MessageBook:
    """The messages of every conversation, keyed by seq, with revision 3 applied.

    :meth:`add` takes messages in any order a session delivers them (live, history,
    older pages prepended): an edit or reaction that arrives before its target (an older
    page not loaded yet) waits and is applied when the target comes.
    """

    def __init__(self) -> None:
        self._views: dict[ConvKey, dict[int, MessageView]] = {}
        self._waiting: dict[tuple[ConvKey, int], list[Message]] = {}
        #: Seqs of messages that change others: a UI shows them folded into their target.
        self.targeting: dict[ConvKey, set[int]] = {}

    def view(self, conv: ConvKey, seq: int) -> MessageView | None:
        return self._views.get(conv, {}).get(seq)

    def views(self, conv: ConvKey) -> dict[int, MessageView]:
        return self._views.get(conv, {})

    def add(self, conv: ConvKey, messages: Iterable[Message | Gap]) -> set[int]:
        """Record messages; returns the seqs of the target messages that changed."""
        changed: set[int] = set()
        for message in messages:
            if isinstance(message, Gap):
                continue
            seq = message.get("seq")
            if not isinstance(seq, int):
                continue
            kind = message.get("kind")
            if kind in TARGETING_KINDS:
                self.targeting.setdefault(conv, set()).add(seq)
                target = message.get("target")
                if isinstance(target, int):
                    if self._apply(conv, target, message):
                        changed.add(target)
                    else:
                        self._waiting.setdefault((conv, target), []).append(message)
                continue
            reply_to = message.get("reply_to")
            view = MessageView(
                seq,
                str(message.get("from", "")),
                str(message.get("text", "")),
                kind if isinstance(kind, str) else None,
                reply_to if isinstance(reply_to, int) else None,
            )
            views = self._views.setdefault(conv, {})
            views[seq] = view
            # A new message is drawn as it is appended: it changed only if changes that
            # arrived before it (an older page loaded late) were applied to it now.
            early = self._waiting.pop((conv, seq), [])
            for waiting in sorted(early, key=_seq):
                self._apply(conv, seq, waiting)
            if early:
                changed.add(seq)
        self._bound(conv)
        return changed

    def _bound(self, conv: ConvKey) -> None:
        """Keep memory flat over a long session: drop the oldest messages and waiters."""
        views = self._views.get(conv, {})
        if len(views) > MAX_VIEWS + MAX_VIEWS // 10:
            for seq in sorted(views)[: len(views) - MAX_VIEWS]:
                del views[seq]
            targeting = self.targeting.get(conv, set())
            oldest = min(views) if views else 0
            self.targeting[conv] = {seq for seq in targeting if seq >= oldest}
        if len(self._waiting) > MAX_WAITING:
            for key in list(self._waiting)[: len(self._waiting) - MAX_WAITING]:
                del self._waiting[key]

    def _apply(self, conv: ConvKey, target: int, message: Message) -> bool:
        view = self.view(conv, target)
        if view is None:
            return False
        kind, sender = message.get("kind"), str(message.get("from", ""))
        text = str(message.get("text", ""))
        if kind == "edit" and not view.deleted:
            view.text, view.edited = text, True
        elif kind == "delete":
            view.deleted, view.deleted_by, view.text = True, sender, ""
            view.reactions.clear()
        elif kind == "react":
            view.reactions.setdefault(text, {})[nick_key(sender)] = sender
        elif kind == "unreact":
            view.reactions.get(text, {}).pop(nick_key(sender), None)
        return True


def _seq(message: Message) -> int:
    seq = message.get("seq")
    return seq if isinstance(seq, int) else 0


@dataclass(frozen=True, slots=True)
class TypingNow:
    """Who is typing in a conversation right now (nicks), for a status line."""

    conv: ConvKey
    nicks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MarkerMoved:
    """The user's read marker in ``conv`` is now ``seq`` (from any of the user's sessions)."""

    conv: ConvKey
    seq: int
    #: A DM stream's other user as the server spells the nick (``with``); None otherwise.
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class MarkersRestored:
    """This connection's read markers are fetched (or could not be): :attr:`Features.markers`
    says where the user stopped reading, so a client may now show it and mark on."""


@dataclass(frozen=True, slots=True)
class TargetsChanged:
    """Messages (by seq) whose text, deletion or reactions changed."""

    conv: ConvKey
    seqs: frozenset[int]


@dataclass(frozen=True, slots=True)
class SearchHit:
    conv: ConvKey
    message: Message

    @property
    def seq(self) -> int:
        return _seq(self.message)


FeatureEvent = TypingNow | MarkerMoved | MarkersRestored | TargetsChanged
FeatureListener = Callable[[FeatureEvent], None]


def conv_of_stream(fields: Message, own_nick: str) -> ConvKey | None:
    """The conversation a stream-naming object (marker, typing) is about."""
    if isinstance(fields.get("room"), str):
        return ConvKey.room(str(fields["room"]))
    if isinstance(fields.get("with"), str):
        return ConvKey.dm(str(fields["with"]))
    if fields.get("announcements") is True:
        return ANNOUNCEMENTS
    return None


def _peer(fields: Message) -> str | None:
    """The other user a DM stream's ``with`` names, spelled as the server sent it."""
    peer = fields.get("with")
    return peer if isinstance(peer, str) else None


def conv_of_message(message: Message, own_nick: str) -> ConvKey:
    """The conversation a stored message (msg, dm, announce) belongs to."""
    kind = message.get("type")
    if kind == "msg":
        return ConvKey.room(str(message.get("room", "")))
    if kind == "dm":
        return ConvKey.dm(dm_partner(message, own_nick))
    return ANNOUNCEMENTS


# -- bound to a session --------------------------------------------------------------------------


class Features:
    """Revision 3 calls and state for one :class:`ChatSession`.

    Create it before running the session: it listens to the session's events to keep
    :attr:`book`, :attr:`markers` and who is typing up to date.
    """

    def __init__(self, session: ChatSession, *, clock: Callable[[], float] = time.monotonic):
        self.session = session
        self.book = MessageBook()
        #: The user's read marker per conversation (synced from the server).
        self.markers: dict[ConvKey, int] = {}
        #: Whether :attr:`markers` were fetched on this connection (:class:`MarkersRestored`).
        #: Until then a marker may be missing or behind: the session's history arrives before
        #: the fetch is answered, and marking it read on sight would leave no trace of where
        #: the user had stopped reading.
        self.restored = False
        self._clock = clock
        self._typing_sent: dict[ConvKey, float] = {}
        #: The marks being sent per conversation, and the newest seq asked of each.
        self._marking: dict[ConvKey, asyncio.Future[None]] = {}
        self._marking_to: dict[ConvKey, int] = {}
        self._pause: Callable[[float], Awaitable[None]] = asyncio.sleep
        #: conv -> nick key -> (nick, shown until)
        self._typing: dict[ConvKey, dict[str, tuple[str, float]]] = {}
        self._listeners: list[FeatureListener] = []
        session.add_listener(self._on_session_event)

    def add_listener(self, listener: FeatureListener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: FeatureEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("feature listener failed on %r", event)

    # -- incoming ---------------------------------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, MessagesAdded):
            changed = self.book.add(event.conv, event.items)
            for item in event.items:
                if not isinstance(item, Gap):
                    self._stop_typing(event.conv, str(item.get("from", "")))
            if changed:
                self._emit(TargetsChanged(event.conv, frozenset(changed)))
        elif isinstance(event, HistoryReset):
            # Seqs seen before are void (rev 2), the read markers' too: else nothing below
            # the old marker would be marked again. The server's are fetched at connect.
            if event.conv is None:
                self.markers.clear()
            else:
                self.markers.pop(event.conv, None)
        elif isinstance(event, StateChanged):
            self.restored = False
            if event.state is State.CONNECTED:
                self.session._spawn(self.restore_markers())
        elif isinstance(event, ServerEvent):
            message = event.message
            if message.get("type") == "marker":
                conv = conv_of_stream(message, self.session.nick)
                seq = message.get("seq")
                if conv is not None and isinstance(seq, int):
                    self._set_marker(conv, seq, _peer(message))
            elif message.get("type") == "typing":
                conv = conv_of_stream(message, self.session.nick)
                if conv is not None:
                    self._start_typing(conv, str(message.get("from", "")))

    def _set_marker(self, conv: ConvKey, seq: int, peer: str | None = None) -> None:
        if seq > self.markers.get(conv, 0):
            self.markers[conv] = seq
            self._emit(MarkerMoved(conv, seq, peer))

    async def restore_markers(self) -> None:
        """Fetch every read marker of the user (done at each connect), then say
        :class:`MarkersRestored` (also when the server could not tell: an older one)."""
        try:
            reply = await self.session.request(Markers())
        except NotConnected as exc:
            log.info("could not fetch read markers: %s", exc)
            return  # the next connection fetches them
        except ServerError as exc:
            log.info("could not fetch read markers: %s", exc)
            reply = {}
        for entry in reply.get("markers", []):
            conv = conv_of_stream(entry, self.session.nick)
            seq = entry.get("seq")
            if conv is not None and isinstance(seq, int):
                self._set_marker(conv, seq, _peer(entry))
        self.restored = True
        self._emit(MarkersRestored())

    def _start_typing(self, conv: ConvKey, nick: str) -> None:
        if not nick or nick_key(nick) == nick_key(self.session.nick):
            return
        self._typing.setdefault(conv, {})[nick_key(nick)] = (nick, self._clock() + TYPING_SHOWN_FOR)
        self._emit(TypingNow(conv, self.typing_in(conv)))

    def _stop_typing(self, conv: ConvKey, nick: str) -> None:
        if self._typing.get(conv, {}).pop(nick_key(nick), None) is not None:
            self._emit(TypingNow(conv, self.typing_in(conv)))

    def typing_in(self, conv: ConvKey) -> tuple[str, ...]:
        """Nicks typing in ``conv`` now (expired notifications dropped)."""
        now = self._clock()
        current = self._typing.get(conv, {})
        for key in [k for k, (_, until) in current.items() if until <= now]:
            del current[key]
        return tuple(nick for nick, _ in current.values())

    def unread(self, conv: ConvKey) -> int:
        """Messages from others after the read marker (edits, deletes and reactions not
        counted; nor the user's own, e.g. sent from a script, which never marks)."""
        marker = self.markers.get(conv, 0)
        targeting = self.book.targeting.get(conv, set())
        me = nick_key(self.session.nick)
        return sum(
            1
            for seq, view in self.book.views(conv).items()
            if seq > marker
            and seq not in targeting
            and not view.deleted
            and nick_key(view.sender) != me
        )

    # -- requests ---------------------------------------------------------------------------

    def reply(self, conv: ConvKey, text: str, reply_to: int, *, action: bool = False) -> Pending:
        """Queue a message answering ``reply_to`` (sent with a cid like any other)."""
        if conv.kind is ConvKind.ROOM:
            return self.session.say(conv.name, text, action=action, reply_to=reply_to)
        if conv.kind is ConvKind.DM:
            return self.session.dm(conv.name, text, reply_to=reply_to)
        raise ValueError("announcements take no replies")

    # A cid makes a retry after a lost reply safe (the caller may resend the same call).

    async def edit(self, conv: ConvKey, seq: int, text: str) -> Message:
        request = Edit(seq=seq, text=text, cid=uuid.uuid4().hex, **stream_fields(conv))
        return await self.session.request(request)

    async def delete(self, conv: ConvKey, seq: int) -> Message:
        request = Delete(seq=seq, cid=uuid.uuid4().hex, **stream_fields(conv))
        return await self.session.request(request)

    async def react(self, conv: ConvKey, seq: int, emoji: str, *, remove: bool = False) -> Message:
        request = React(
            seq=seq, emoji=emoji, remove=remove, cid=uuid.uuid4().hex, **stream_fields(conv)
        )
        return await self.session.request(request)

    async def toggle_reaction(self, conv: ConvKey, seq: int, emoji: str) -> Message:
        """Add the user's ``emoji`` to a message, or take it back if it is there."""
        view = self.book.view(conv, seq)
        mine = view is not None and view.reacted(self.session.nick, emoji)
        return await self.react(conv, seq, emoji, remove=mine)

    async def mark(self, conv: ConvKey, seq: int) -> bool:
        """Move the read marker forward (only forward: nothing is sent otherwise).

        One ``mark`` per conversation is in flight at a time; seqs asked meanwhile are sent
        as one, the newest, ``MARK_INTERVAL`` after it is answered (a UI marks at every
        arriving message).
        Returns once the marker is at ``seq`` or beyond.
        """
        if seq <= max(self.markers.get(conv, 0), self._marking_to.get(conv, 0)):
            return False
        self._marking_to[conv] = seq
        sending = self._marking.get(conv)
        if sending is None:
            sending = self._marking[conv] = asyncio.ensure_future(self._send_marks(conv))
        await asyncio.shield(sending)
        return True

    async def _send_marks(self, conv: ConvKey) -> None:
        try:
            while (seq := self._marking_to[conv]) > self.markers.get(conv, 0):
                await self.session.request(Mark(seq=seq, **stream_fields(conv)))
                self._set_marker(conv, seq)
                if self._marking_to[conv] > seq:
                    await self._pause(MARK_INTERVAL)  # the newest seq asked meanwhile follows
        finally:
            del self._marking[conv], self._marking_to[conv]

    async def typing(self, conv: ConvKey) -> bool:
        """Tell the others the user is typing; at most once per 3 s per conversation."""
        if conv.kind is ConvKind.ANNOUNCE:
            return False
        now = self._clock()
        if now - self._typing_sent.get(conv, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return False
        self._typing_sent[conv] = now
        await self.session.request(Typing(**stream_fields(conv)))
        return True

    async def search(
        self,
        text: str,
        *,
        conv: ConvKey | None = None,
        before: float | None = None,
        limit: int | None = None,
    ) -> tuple[list[SearchHit], bool]:
        """Matching messages, newest first, and whether the server stopped early (``more``)."""
        request = Search(
            text=text,
            before=before,
            limit=limit,
            **(stream_fields(conv) if conv is not None else {}),
        )
        reply = await self.session.request(request)
        hits = [
            SearchHit(conv_of_message(m, self.session.nick), m) for m in reply.get("messages", [])
        ]
        return hits, bool(reply.get("more"))
