"""Authentication at ``hello`` and the periodic re-check of sessions already logged in.

Guessing is bounded per address (:class:`FailureLimiter`) and password checks are bounded in
number at once (each scrypt run takes ~16 MiB and tens of milliseconds, off the event loop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from imchat.protocol import ErrorCode, Hello, ProtocolError

from .addrlimits import AddressLimits, LocalAddressLimits
from .auth import dummy_hash, hash_token, verify_password
from .config import ServerConfig
from .identities import account_took
from .peer import Credential, Peer
from .ratelimit import FailureLimiter
from .store import Account, Store

log = logging.getLogger(__name__)

#: Password checks running at once: each scrypt takes ~16 MiB and tens of milliseconds.
MAX_PARALLEL_PASSWORD_CHECKS = 4
#: Sessions a re-check looks up between two turns of the event loop (each lookup may be a
#: query that does not yield): other sessions' messages pass in between.
RECHECK_SLICE = 128


class Authenticator:
    def __init__(
        self, config: ServerConfig, store: Store, addr_limits: AddressLimits | None = None
    ) -> None:
        self.store = store
        if addr_limits is None:
            addr_limits = LocalAddressLimits(0, 0, config.auth_failures, config.auth_window)
        #: Failed logins per address (shared by a cluster's nodes on the Redis backend).
        self.addr_limits = addr_limits
        #: This node's failure counts (when they are kept here), for inspection.
        self.limiter = (
            addr_limits.failures
            if isinstance(addr_limits, LocalAddressLimits)
            else FailureLimiter(0, config.auth_window)
        )
        #: Every password check from an address, right or wrong: a scrypt run costs the same
        #: either way, so correct passwords in a loop must not crowd out everyone's logins.
        self.checks = FailureLimiter(config.auth_logins, config.auth_window)
        self._password_checks = asyncio.Semaphore(MAX_PARALLEL_PASSWORD_CHECKS)
        #: The store's credentials version every session was last checked against.
        self._checked_version: str | None = None

    async def authenticate(
        self, session: Peer, key: str, req: Hello, account: Account | None
    ) -> Credential:
        """Check a password or token; an address that failed too often is not checked at all.

        The block is checked again right before each scrypt run: parallel guesses wait for a
        free slot, and by then the failures before them count, so at most ``auth_failures``
        plus ``MAX_PARALLEL_PASSWORD_CHECKS - 1`` guesses per window get through.
        """
        if req.token is None and req.password is None:
            raise ProtocolError(ErrorCode.AUTH_FAILED, f"{req.nick} needs its password or a token")
        limits, checks, addr = self.addr_limits, self.checks, session.addr
        blocked = ProtocolError(
            ErrorCode.RATE_LIMITED, "too many logins from your address; try later"
        )
        if await limits.login_blocked(addr):
            raise blocked
        ok = False
        credential: Credential | None = None
        if account is not None and req.token is not None:
            credential = ("token", hash_token(req.token))
            ok = await self.store.token_owner(credential[1]) == key
        elif req.password is not None:
            # An account without a password (token-only) is checked against a dummy hash:
            # a wrong password costs the same ~100 ms whether the account has one or not.
            encoded = account.password_hash if account is not None else None
            async with self._password_checks:
                if checks.blocked(addr) or await limits.login_blocked(addr):
                    raise blocked
                checks.record(addr)
                matched = await asyncio.to_thread(
                    verify_password, req.password, encoded or dummy_hash()
                )
            if encoded:
                credential = ("password", encoded)
                ok = matched
        if ok and credential is not None:
            return credential
        await limits.login_failed(addr)
        raise ProtocolError(ErrorCode.AUTH_FAILED, f"wrong password or token for {req.nick}")

    async def start(self) -> None:
        """At server start, before any session: note the credentials version. Every session
        is checked at its hello against this version or a later one, so the first re-check
        looks nothing up unless a credential changed since (it used to look up every session:
        at a restart, ten seconds in, in the middle of the reconnect storm)."""
        try:
            self._checked_version = await self.store.credentials_version()
        except Exception:
            log.exception("could not read the credentials version; the first re-check is full")

    async def recheck(self, sessions: Iterable[Peer]) -> None:
        """Close sessions whose token was revoked, or account removed or re-passworded since.

        Logins read accounts through at every hello; this extends that to sessions already
        logged in, so ``imchat token revoke`` and ``imchat user remove``/``passwd`` take hold
        within ``auth_recheck`` seconds. Only those changes (and an account created for a
        guest's nick) can end a session, and each moves the store's credentials version: while
        it stands still nothing is looked up. Each distinct credential is looked up once, and
        the loop gets a turn every :data:`RECHECK_SLICE` sessions.
        """
        try:
            version = await self.store.credentials_version()
        except Exception:
            log.exception("could not read the credentials version; re-checking every session")
            version = None
        if version is not None and version == self._checked_version:
            return
        #: Each distinct login's verdict: a guest by its identity, else account and credential.
        verdicts: dict[tuple[str, str | Credential], bool] = {}
        complete = version is not None
        for index, session in enumerate(list(sessions)):
            if index and index % RECHECK_SLICE == 0:
                await asyncio.sleep(0)
            user, credential = session.user, session.credential
            if user is None or session.closing:
                continue
            login = (user.key, credential if credential is not None else user.ident)
            if login not in verdicts:
                try:
                    if credential is None:
                        # A guest: an account created for its nick ends its identity (rev 2).
                        verdicts[login] = await self._guest_still_holds(user.key, user.ident)
                    else:
                        verdicts[login] = await self._still_valid(user.key, credential)
                except Exception:
                    log.exception("could not re-check the login of %s", user.nick)
                    verdicts[login] = True  # a store hiccup is no reason to log everyone out
                    complete = False  # ... but the next re-check looks again
            if verdicts[login]:
                continue
            if credential is None:
                session.fail(account_took(user.nick))
            else:
                session.fail(
                    ProtocolError(ErrorCode.AUTH_FAILED, "your token or password was revoked")
                )
        if complete:
            # Sessions that said hello meanwhile were checked against at least this version.
            self._checked_version = version

    async def _guest_still_holds(self, key: str, ident: str) -> bool:
        identity = await self.store.identity(key)
        return identity is not None and identity.account is None and identity.ident == ident

    async def _still_valid(self, key: str, credential: Credential) -> bool:
        kind, value = credential
        if kind == "token":
            return await self.store.token_owner(value) == key
        record = await self.store.lookup_user(key)
        account = record.account if record is not None else None
        return account is not None and account.password_hash == value
