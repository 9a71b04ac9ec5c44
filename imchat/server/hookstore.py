"""Webhooks as the store keeps them (``imchat hook add``; served by ``imchat.server.http``).

Kept apart from :mod:`imchat.server.store`: only the HTTP front end and the ``hook`` commands
use them, and both stores implement :class:`HookStore` in a self-contained section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Services a hook can speak for (``imchat.server.http.adapters`` has one adapter each).
HOOK_KINDS = ("github", "alertmanager", "generic")


@dataclass(frozen=True, slots=True)
class Hook:
    """A webhook: ``POST /hooks/<token>`` turns a service's event into a message in ``room``.

    Only the token's SHA-256 is stored; :attr:`id` is a prefix of it, enough to remove it.
    """

    id: str
    kind: str
    room: str
    #: Key of the account the messages are posted as.
    user: str
    #: GitHub's shared secret for ``X-Hub-Signature-256``; kept in the clear because checking
    #: an HMAC needs it (the data directory is private, mode 0700). Empty: none.
    secret: str = ""
    #: The generic adapter's message template, e.g. ``"{level}: {message}"``.
    template: str = ""
    created: float = 0.0


@runtime_checkable
class HookStore(Protocol):
    async def add_hook(self, token_hash: str, hook: Hook) -> None: ...

    async def hook_by_token(self, token_hash: str) -> Hook | None: ...

    async def list_hooks(self) -> list[Hook]:
        """Every hook, oldest first."""

    async def remove_hook(self, hook_id: str) -> bool:
        """Delete the hook whose id this is; False if there is none."""

    async def ping(self) -> None:
        """One round trip through the path writes take; raises if the store cannot answer."""
