"""Who is calling: an account token from ``Authorization: Bearer``, and its message bucket.

A token is looked up in the store and the answer kept for ``auth_recheck`` seconds: a
revoked token stops working over HTTP within the time a native session logged in with it
keeps running. Failed attempts count against the hub's per-address login limiter, shared with
native logins. Buckets are per account (an HTTP request is too short-lived to own one).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from imchat.protocol import ErrorCode
from imchat.server.auth import hash_token
from imchat.server.fanout import User
from imchat.server.hub import Hub
from imchat.server.ratelimit import TokenBucket, address_key

from .errors import ApiError
from .session import ApiSession

#: Tokens remembered at most, and accounts' buckets (least recently used go first).
MAX_CACHED = 10000


@dataclass(frozen=True, slots=True)
class Account:
    key: str
    nick: str
    admin: bool


class Callers:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._tokens: OrderedDict[str, tuple[Account, float]] = OrderedDict()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def addr(self, request: web.Request) -> tuple[str, str]:
        """(the per-address limit key, a printable peer) of a request."""
        remote = request.remote or "?"
        return address_key(remote), remote

    async def check_blocked(self, addr: str) -> None:
        # The same per-address failure count as native logins (in Redis on a cluster).
        if await self.hub.authn.addr_limits.login_blocked(addr):
            raise ApiError(
                ErrorCode.RATE_LIMITED,
                "too many failed logins from your address; try later",
                retry_after=self.hub.config.auth_window,
            )

    async def failed(self, addr: str, message: str) -> ApiError:
        await self.hub.authn.addr_limits.login_failed(addr)
        return ApiError(ErrorCode.AUTH_FAILED, message)

    async def authenticate(self, request: web.Request) -> ApiSession:
        """A session for the account whose token the request carries."""
        addr, peer = self.addr(request)
        await self.check_blocked(addr)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(ErrorCode.AUTH_FAILED, "send Authorization: Bearer <account token>")
        account = await self._account_of(hash_token(token.strip()))
        if account is None:
            raise await self.failed(addr, "unknown or revoked token")
        return self.session(account, addr, peer, bucket_key=f"a:{account.key}")

    async def account(self, key: str) -> Account | None:
        """The account with this nick key (a hook's), read through."""
        record = await self.hub.store.lookup_user(key)
        if record is None or record.account is None:
            return None
        return Account(key, record.account.nick, record.account.admin)

    def session(self, account: Account, addr: str, peer: str, *, bucket_key: str) -> ApiSession:
        user = User(account.nick, account.admin)
        user.detached = True
        return ApiSession(user, self._bucket(bucket_key), addr, peer)

    async def _account_of(self, token_hash: str) -> Account | None:
        now = time.monotonic()
        cached = self._tokens.get(token_hash)
        if cached is not None and cached[1] > now:
            self._tokens.move_to_end(token_hash)
            return cached[0]
        key = await self.hub.store.token_owner(token_hash)
        account = await self.account(key) if key is not None else None
        if account is None:
            self._tokens.pop(token_hash, None)
            return None
        self._tokens[token_hash] = (account, now + self.hub.config.auth_recheck)
        self._tokens.move_to_end(token_hash)
        while len(self._tokens) > MAX_CACHED:
            self._tokens.popitem(last=False)
        return account

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self.hub.new_bucket()
            while len(self._buckets) > MAX_CACHED:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket
