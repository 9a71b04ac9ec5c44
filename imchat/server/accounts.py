"""Account and token administration, shared by ``imchat user``/``imchat token`` and tests.

These run beside a live server on the same store: the server reads accounts and tokens
through at every ``hello``, so a change here applies from the next login on, and re-checks
logged-in sessions every ``auth_recheck`` seconds (see SECURITY.md).
"""

from __future__ import annotations

import asyncio

from imchat.protocol import is_valid_nick

from .auth import hash_password, hash_token, new_token
from .store import Account, Store, TokenInfo

#: Shorter passwords fall to an offline guess even through scrypt; the limit is deliberately low.
MIN_PASSWORD = 8
#: A password travels in one frame; anything longer is a mistake, not a passphrase.
MAX_PASSWORD = 1024
MAX_LABEL = 100


class AccountError(Exception):
    """A refused administrative request; the message is one line for the operator."""


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password must have at most {MAX_PASSWORD} characters")


async def _hash(password: str) -> str:
    check_password(password)
    # scrypt takes tens of milliseconds on purpose; keep it off the event loop.
    return await asyncio.to_thread(hash_password, password)


async def _account(store: Store, nick: str) -> Account:
    record = await store.lookup_user(nick.lower())
    if record is None or record.account is None:
        raise AccountError(f"no account called {nick}")
    return record.account


async def add_user(store: Store, nick: str, password: str | None, *, admin: bool = False) -> None:
    """Register ``nick``; ``password`` None makes a token-only account (bots)."""
    if not is_valid_nick(nick):
        raise AccountError(f"{nick!r} is not a valid nick")
    record = await store.lookup_user(nick.lower())
    if record is not None and record.account is not None:
        raise AccountError(f"{record.nick} already has an account")
    password_hash = await _hash(password) if password is not None else None
    await store.create_account(nick, admin=admin, password_hash=password_hash)


async def set_password(store: Store, nick: str, password: str) -> None:
    await _account(store, nick)
    if not await store.set_password(nick.lower(), await _hash(password)):
        raise AccountError(f"no account called {nick}")


async def remove_user(store: Store, nick: str) -> None:
    if not await store.remove_account(nick.lower()):
        raise AccountError(f"no account called {nick}")


async def create_token(store: Store, nick: str, label: str = "") -> str:
    """A new token for ``nick``'s account; only its hash is stored, so show it now or never."""
    if len(label) > MAX_LABEL:
        raise AccountError(f"label must have at most {MAX_LABEL} characters")
    await _account(store, nick)
    token = new_token()
    await store.add_token(nick.lower(), hash_token(token), label)
    return token


async def list_tokens(store: Store, nick: str | None) -> list[TokenInfo]:
    if nick is not None:
        await _account(store, nick)
    return await store.list_tokens(nick.lower() if nick is not None else None)


async def revoke_token(store: Store, token_id: str) -> None:
    if not await store.revoke_token(token_id):
        raise AccountError(f"no token with id {token_id}")
