"""What the server needs from durable storage, independent of where it lives.

The embedded implementation is :class:`imchat.server.sqlite_store.SQLiteStore`; a Redis one
slots in behind the same interface. Every method that stores something returns only after it
is committed, so an ``ok`` sent after ``await store.append(...)`` is a durable promise.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import msgspec

from imchat.protocol.events import StoredEvent

from .message_features import Feature, SearchResult, SearchScope
from .streams import StreamId

#: Hex characters of a token's hash that name it in ``imchat token list``/``revoke``.
TOKEN_ID_LENGTH = 12


def token_id(token_hash: str) -> str:
    return token_hash[:TOKEN_ID_LENGTH]


#: Random bytes drawn from the OS at a time for identity ids and resume secrets (1,489
#: guests' worth): in a storm each draw still waits for the GIL, up to the writer thread's
#: switch interval (5 ms), so one per 93 guests (4 KiB) was still 3 % of the server's time.
POOL_SIZE = 65536


class _RandomPool:
    """The OS's random bytes (``os.urandom``), drawn :data:`POOL_SIZE` at a time and handed
    out in slices, each byte once.

    Every guest's ``hello`` needs two secrets; a ``getrandom`` call each let go of the GIL, so
    in a connect storm the event loop waited for the store's writer thread twice per hello.
    A forked child starts with an empty pool (it never hands out the parent's bytes).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._used = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._used + n > len(self._bytes):
                self._bytes = os.urandom(max(POOL_SIZE, n))
                self._used = 0
            start = self._used
            self._used = start + n
            return self._bytes[start : start + n]

    def reset(self) -> None:
        """Forget what is left (a fork's child)."""
        with self._lock:
            self._bytes = b""
            self._used = 0


_POOL = _RandomPool()
os.register_at_fork(after_in_child=_POOL.reset)


def new_ident(kind: str) -> str:
    """A fresh identity id: ``g.`` (guest) or ``a.`` (account) and 24 hex digits.

    The dot is no nick character, so no identity id equals a nick key: accounts from before
    revision 2 keep their nick key as id and own what was stored under it.
    """
    return f"{kind}.{_POOL.take(12).hex()}"


def new_resume() -> str:
    """A guest identity's resume secret (43 URL-safe characters, well under 64): 32 random
    bytes, as ``secrets.token_urlsafe(32)``."""
    return base64.urlsafe_b64encode(_POOL.take(32)).rstrip(b"=").decode("ascii")


def resume_hash(resume: str) -> str:
    """Stores keep only this: a leaked database does not let anyone take a held nick."""
    return hashlib.sha256(resume.encode()).hexdigest()


def new_epoch() -> str:
    """A store's epoch: random, so two fresh stores never share one."""
    return secrets.token_hex(16)


class StoreUnavailable(Exception):
    """The store (or the cluster behind it) cannot be reached at start; one line for humans."""


class Draft(msgspec.Struct):
    """A message to store. ``event`` lacks ``seq`` and ``ts``; the store assigns both.

    A struct, not a dataclass: every message makes one, and the dataclass's ``__init__`` of
    fifteen fields (Python) cost ~5,000 instructions of the say path.
    """

    stream: StreamId
    sender_key: str
    cid: str | None
    event: StoredEvent
    #: Recipient identity of a DM: it stays undelivered until claimed live or fetched at
    #: hello. A clustered store decides this itself, atomically with storing.
    pending_for: str | None = None
    #: The requesting session's hold (:meth:`Fanout.hold`): a store that publishes the message
    #: itself tags it with this, so the requesting node delivers it only after the ``ok``.
    hold: str | None = None
    #: Revision 3: the target rules this message is checked against when it is stored.
    feature: Feature | None = None
    #: False for a detached (HTTP) poster: the store must not require room membership.
    as_member: bool = True
    #: The sender's identity id: the namespace of its ``cid``s (*rev 2*). Empty: the nick key.
    owner: str = ""
    #: A DM's sender and recipient identity ids: each reads the stream from its first
    #: message on (a later guest with the same nick sees nothing earlier).
    dm_idents: tuple[str, str] | None = None
    #: A DM's recipient identity, for a clustered store that decides about queueing itself.
    recipient_ident: str = ""
    #: Undelivered DMs a recipient may have waiting; one more is ``limit_reached``. 0: none.
    max_queued: int = 0
    #: Of those, how many may come from this sender (``queue_source``); 0: no share.
    max_queued_per_sender: int = 0
    #: The sender whose share this DM counts against (:func:`imchat.server.peer.budget_key`:
    #: a guest's address, an account). Empty: the DM stream (the sender's nick).
    queue_source: str = ""

    @property
    def cid_owner(self) -> str:
        return self.owner or self.sender_key


def share_refusal(share: int) -> str:
    """The text of ``limit_reached`` for a sender whose share of a DM queue is used up."""
    return f"{share} of your messages already wait for them; try later"


class Stored(msgspec.Struct, frozen=True):
    # A Struct, not a frozen dataclass: the writer makes one per message, and a frozen
    # dataclass's __init__ (object.__setattr__ per field) cost ~10,000 instructions of it.
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
    #: Revision 3: the error code (``no_such_message``, ``forbidden``) a Draft.feature check
    #: refused the message with; nothing was stored. Stores raise it from ``append``.
    refused: str | None = None


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
    #: The account's identity id (cids, DM queue, DM view); a new one for each account.
    ident: str = ""


@dataclass(slots=True, frozen=True)
class Identity:
    """Who holds a nick now: an account, or a guest identity that is online or held."""

    nick: str
    ident: str
    account: Account | None = None
    #: Unix time a held guest identity ends; None while it is online (and for accounts).
    held_until: float | None = None


class ClaimStatus(StrEnum):
    NEW = "new"
    RESUMED = "resumed"
    #: Held or online under another resume: ``nick_taken``.
    TAKEN = "taken"
    #: The nick is an account's: authenticate instead.
    ACCOUNT = "account"


@dataclass(slots=True, frozen=True)
class GuestClaim:
    """What a guest ``hello`` found (see :meth:`Store.claim_guest`)."""

    status: ClaimStatus
    identity: Identity | None = None
    #: TAKEN: when the hold ends (None: the identity is online).
    held_until: float | None = None


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

    async def epoch(self) -> str:
        """The store's lifetime name: created with the store, kept across restarts (rev 2)."""

    # Guest identities (rev 2)
    async def identity(self, key: str) -> Identity | None:
        """The account or live guest identity holding a nick key; None if the nick is free."""

    async def claim_guest(
        self, nick: str, resume: str | None, new_resume: str, hold: float
    ) -> GuestClaim:
        """Atomically: continue the guest identity ``resume`` names, or begin a new one with
        ``new_resume`` if the nick is free (an earlier identity whose hold ended is dropped with
        its undelivered DMs). ``resume``/``new_resume`` are hashes (:func:`resume_hash`).
        The identity counts as online until :meth:`guest_left`; ``hold`` bounds how long a
        claim that never got a session keeps it (a clustered store)."""

    async def guest_left(self, ident: str, hold: float) -> None:
        """The identity's last session ended: hold it for ``hold`` seconds from now.

        A clustered store does this itself when the cluster's last session ends.
        """

    async def dm_streams(self, ident: str) -> list[str]:
        """The DM streams an identity has a message in (whom its presence concerns)."""

    async def hold_guests(self, hold: float) -> None:
        """At start: every guest identity (online when the server stopped, or held) is held
        ``hold`` seconds from now, so holds survive restarts and count on from them."""

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

    async def credentials_version(self) -> str:
        """Changes whenever an account is created or removed, a password set or a token
        revoked (by any process): the only changes that can end a logged-in session, so the
        periodic re-check looks sessions up only when this moved."""

    # Rooms
    async def room(self, name: str) -> RoomInfo | None:
        """A room's topic and last seq."""

    async def rooms(self) -> list[RoomInfo]: ...

    async def room_count(self) -> int:
        """How many rooms exist (the cap on rooms guests create)."""

    async def room_page(self, after: str | None, limit: int) -> tuple[list[RoomInfo], bool]:
        """The first ``limit`` rooms by name after ``after``, and whether more follow. Reads
        only the rooms it returns: a page must not cost every room."""

    async def create_room(self, name: str) -> RoomInfo: ...

    async def set_topic(self, name: str, topic: str) -> None: ...

    # Messages
    async def append(self, draft: Draft) -> Stored: ...

    async def history(
        self,
        stream: StreamId,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        viewer: str | None = None,
    ) -> list[bytes]:
        """Stored event payloads, oldest first (see the contract's History section).

        ``viewer`` (an identity id) limits a DM stream to what that identity may read: the
        messages from its first one on.
        """

    async def prune(self, *, before_ts: float | None, keep: int | None) -> int:
        """Retention: delete messages older than ``before_ts`` and all but the newest ``keep``
        of each stream (None: no such rule); the number deleted. A seq is never reused."""
        ...

    async def peek_pending(self, recipient: str, limit: int) -> list[tuple[StreamId, int, bytes]]:
        """The oldest ``limit`` undelivered DMs of an identity: (stream, seq, payload), in the
        order they were queued (seq order within a stream). They stay queued."""

    async def drop_pending(self, recipient: str, items: list[tuple[StreamId, int]]) -> None:
        """Remove undelivered DMs that were written to one of the recipient's sessions."""

    async def claim_pending(self, recipient: str, stream: StreamId, seq: int) -> bool:
        """Take one undelivered DM for live delivery; False if a hello's delivery had it."""

    async def set_pending(self, recipient: str, stream: StreamId, seq: int) -> None:
        """Mark a DM undelivered again (its recipient left before it could be sent)."""

    # Revision 3: read markers and search (target checks ride on ``append`` via Draft.feature)
    async def last_seq(self, stream: StreamId) -> int:
        """The stream's newest seq (0 if none)."""

    async def mark(self, user_key: str, stream: StreamId, seq: int) -> bool | None:
        """Move a read marker forward; False if it was already at or past ``seq``, None if
        ``seq`` is above the stream's last seq (nothing changes)."""

    async def marker(self, user_key: str, stream: StreamId) -> int: ...

    async def markers(self, user_key: str) -> list[tuple[StreamId, int]]:
        """Every (stream, seq) marker of a user."""

    async def search(
        self, scope: SearchScope, text: str, *, before: float | None, limit: int
    ) -> SearchResult:
        """Stored plain, action and edit events holding every term, newest first."""
