"""Revision 3 (message features), the parts both stores share.

Edits, deletes and reactions are stored messages of their own; what a store must check
atomically with storing one is described by a :class:`Feature` attached to the
:class:`~imchat.server.store.Draft`. Search semantics (what a "term" is, how a stored text
matches) live here too, so the SQLite index and the bounded Redis scan agree.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

from .streams import StreamId

#: Seconds during which at most one ``typing`` per user and stream is forwarded.
TYPING_INTERVAL = 3.0
#: Event kinds a ``target`` or ``reply_to`` may name (None is a plain message).
TARGETABLE_KINDS = (None, "action")
#: Event kinds of revision 3 that apply to a target.
EDIT, DELETE, REACT, UNREACT, REPLY = "edit", "delete", "react", "unreact", "reply"


#: Throttle entries kept before stale ones are swept.
TYPING_SWEEP_AT = 10000


@dataclass(slots=True)
class TypingThrottle:
    """At most one forwarded ``typing`` per user and stream per :data:`TYPING_INTERVAL`.

    Per server process: in a cluster each node throttles on its own.
    """

    last: dict[tuple[str, StreamId], float] = field(default_factory=dict)

    def allow(self, user_key: str, stream: StreamId) -> bool:
        now = time.monotonic()
        key = (user_key, stream)
        if now - self.last.get(key, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return False
        if len(self.last) >= TYPING_SWEEP_AT:
            self.last = {k: t for k, t in self.last.items() if now - t < TYPING_INTERVAL}
        self.last[key] = now
        return True


@dataclass(slots=True, frozen=True)
class Feature:
    """What a store checks, in the same step as storing, for a message naming another.

    ``kind`` is ``reply`` (a say/dm with ``reply_to``), ``edit``, ``delete``, ``react`` or
    ``unreact``. The store refuses with ``no_such_message`` unless ``target`` is a stored
    plain or action message of the draft's stream that is not deleted, and with
    ``forbidden`` for an edit by anyone but the author or a delete by anyone but the author
    or an admin. A repeated reaction, or removing one that is not there, stores nothing.
    """

    kind: str
    target: int
    #: The requesting user's nick key: authorship is compared with the target's ``from``.
    author: str
    admin: bool = False
    emoji: str = ""


def owner_of(draft: object) -> str:
    """Who a draft's message belongs to: its ``cid`` namespace and the stored sender.

    The nick key today; with guest identities (issue 9) ``Draft.cid_owner``, the identity, so
    that a later guest with the same nick owns none of an earlier one's messages or reactions.
    Read with ``getattr`` so this module needs no change when that field arrives.
    """
    owner = getattr(draft, "cid_owner", None)
    return owner if isinstance(owner, str) and owner else str(getattr(draft, "sender_key", ""))


def marker_owner(user: object) -> str:
    """Whose read markers: the user's identity (``User.ident``, issue 9) when it has one, so
    an account created over a guest's nick inherits none of the guest's markers; else the
    nick key."""
    ident = getattr(user, "ident", None)
    return ident if isinstance(ident, str) and ident else str(getattr(user, "key", ""))


@dataclass(slots=True, frozen=True)
class SearchScope:
    """The streams one search covers: ``streams`` by name, plus every DM stream of
    ``dm_user`` (a user key) when set."""

    streams: tuple[StreamId, ...]
    dm_user: str | None = None

    def covers(self, stream: StreamId) -> bool:
        if stream in self.streams:
            return True
        keys = stream.dm_keys
        return self.dm_user is not None and keys is not None and self.dm_user in keys


@dataclass(slots=True)
class SearchResult:
    #: Matching event payloads, newest first.
    messages: list[bytes] = field(default_factory=list)
    #: True if the search stopped at its work bound before looking at everything (Redis).
    more: bool = False


# -- terms ---------------------------------------------------------------------------------

#: Letters and digits (what SQLite's unicode61 tokenizer keeps); everything else separates.
_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """The case-folded tokens of a text, as the search index sees them."""
    return _TOKEN.findall(text.casefold())


@dataclass(slots=True, frozen=True)
class Query:
    """A search text split into terms. A term with letters or digits must appear as a
    token phrase; a term of punctuation only (``!!``) as a case-insensitive substring."""

    phrases: tuple[tuple[str, ...], ...]
    literals: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Query:
        phrases: list[tuple[str, ...]] = []
        literals: list[str] = []
        for term in text.split():
            found = tokens(term)
            if found:
                phrases.append(tuple(found))
            else:
                literals.append(term.casefold())
        return cls(tuple(phrases), tuple(literals))

    def matches(self, text: str) -> bool:
        """The reference semantics, used where no index answers (the Redis scan)."""
        have = tokens(text)
        folded = text.casefold()
        return all(_has_phrase(have, phrase) for phrase in self.phrases) and all(
            literal in folded for literal in self.literals
        )

    def literals_match(self, text: str) -> bool:
        folded = text.casefold()
        return all(literal in folded for literal in self.literals)


def _has_phrase(have: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(have[i : i + n]) == phrase for i in range(len(have) - n + 1))


# -- streams -------------------------------------------------------------------------------


def dm_participants(stream: StreamId) -> tuple[str, ...]:
    """The user keys of a DM stream (empty for other streams)."""
    return stream.dm_keys or ()


def scope_token(kind: str, name: str) -> str:
    """An index token naming a stream (``s``) or a DM participant (``u``): a short hash, so
    any name fits a token; results are checked against the real stream afterwards."""
    return kind + hashlib.blake2b(name.encode(), digest_size=10).hexdigest()
