"""What the server needs from durable storage, independent of where it lives.

The embedded implementation is :class:`imchat.server.sqlite_store.SQLiteStore`; a Redis one
slots in behind the same interface. Every method that stores something returns only after it
is committed, so an ``ok`` sent after ``await store.append(...)`` is a durable promise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from imchat.protocol.events import StoredEvent

from .streams import StreamId

#: Hex characters of a token's hash that name it in ``imchat token list``/``revoke``.
TOKEN_ID_LENGTH = 12


def token_id(token_hash: str) -> str:
    return token_hash[:TOKEN_ID_LENGTH]


class StoreUnavailable(Exception):
    """The store (or the cluster behind it) cannot be reached at start; one line for humans."""


@dataclass(slots=True)
class Draft:
    """A message to store. ``event`` lacks ``seq`` and ``ts``; the store assigns both."""

    stream: StreamId
    sender_key: str
    cid: str | None
    event: StoredEvent
    #: Recipient key of a DM: it stays undelivered until claimed live or fetched at hello.
    #: A clustered store decides this itself, atomically with storing, and ignores it.
    pending_for: str | None = None
    #: The requesting session's hold (:meth:`Fanout.hold`): a store that publishes the message
    #: itself tags it with this, so the requesting node delivers it only after the ``ok``.
    hold: str | None = None


@dataclass(slots=True, frozen=True)
class Stored:
    seq: int
    ts: float
    #: The event's JSON exactly as stored and sent (without the frame header).
    payload: bytes
    #: True if ``cid`` repeated an earlier message: nothing was stored or should be sent.
    duplicate: bool = False
    #: True if the store already published the message to every node in the same atomic step
    #: as storing it (so publish order is seq order): the hub must not send it again.
    published: bool = False
    #: For an announcement a store published itself: the sessions (on every node) it went to.
    delivered: int | None = None


@dataclass(slots=True)
class RoomInfo:
    name: str
    topic: str = ""
    last_seq: int = 0


@dataclass(slots=True, frozen=True)
class Account:
    nick: str
    admin: bool = False
    password_hash: str | None = None


@dataclass(slots=True, frozen=True)
class TokenInfo:
    """What may be shown about a token: never the token, only a prefix of its hash."""

    #: The first 12 hex characters of the token's SHA-256 (enough to name it for revoking).
    id: str
    #: The key of the account it belongs to.
    user: str
    label: str
    #: Unix seconds.
    created: float


@dataclass(slots=True, frozen=True)
class UserRecord:
    """A known user: one with an account or who ever completed ``hello``."""

    nick: str
    account: Account | None = field(default=None)


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # Users and accounts
    async def lookup_user(self, key: str) -> UserRecord | None:
        """A known user by nick key; sees accounts changed by other processes (the CLI)."""

    async def remember_user(self, nick: str) -> None: ...

    async def create_account(
        self, nick: str, *, admin: bool = False, password_hash: str | None = None
    ) -> None: ...

    async def remove_account(self, key: str) -> bool:
        """Make a user a guest again and revoke its tokens; False if it had no account."""

    async def list_accounts(self) -> list[Account]:
        """Every account, ordered by nick key."""

    async def set_password(self, key: str, password_hash: str) -> bool:
        """Replace an account's password hash; False if there is no such account."""

    async def add_token(self, key: str, token_hash: str, label: str) -> None: ...

    async def token_owner(self, token_hash: str) -> str | None:
        """The key of the account a (hashed) token belongs to."""

    async def list_tokens(self, key: str | None) -> list[TokenInfo]:
        """Tokens of one account (or of all when ``key`` is None), oldest first."""

    async def revoke_token(self, token_id: str) -> bool:
        """Delete the token whose :attr:`TokenInfo.id` this is; False if there is none."""

    # Rooms
    async def room(self, name: str) -> RoomInfo | None:
        """A room's topic and last seq."""

    async def rooms(self) -> list[RoomInfo]: ...

    async def create_room(self, name: str) -> RoomInfo: ...

    async def set_topic(self, name: str, topic: str) -> None: ...

    # Messages
    async def append(self, draft: Draft) -> Stored: ...

    async def history(
        self, stream: StreamId, *, after: int | None, before: int | None, limit: int
    ) -> list[bytes]:
        """Stored event payloads, oldest first (see the contract's History section)."""

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Retention: delete messages older than ``before_ts`` and all but the newest ``keep``
        of each stream (None: no such rule); the number deleted. A seq is never reused."""
        ...

    async def take_pending(self, recipient_key: str) -> list[bytes]:
        """Undelivered DMs for a user, oldest first; each is handed out once."""

    async def claim_pending(self, recipient_key: str, stream: StreamId, seq: int) -> bool:
        """Take one undelivered DM for live delivery; False if a ``take_pending`` had it."""

    async def set_pending(self, recipient_key: str, stream: StreamId, seq: int) -> None:
        """Mark a DM undelivered again (its recipient left before it could be sent)."""
