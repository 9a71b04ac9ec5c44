"""Session requests (hello, ping, bye) and what a user's arrival and departure announce."""

from __future__ import annotations

import logging

import imchat
from imchat.protocol import PROTOCOL_VERSION, Bye, ErrorCode, Hello, Ping, ProtocolError
from imchat.protocol import encode_message as encode
from imchat.protocol.events import OfflineEvent, OnlineEvent, PartedEvent, Pong, Welcome

from ..context import Context, now
from ..guest_budget import may_begin_guest
from ..identities import dm_peer_keys, nick_taken
from ..peer import Peer, User
from ..store import ClaimStatus, Identity, new_resume, resume_hash

log = logging.getLogger(__name__)

SERVER_NAME = f"imchat/{'.'.join(imchat.__version__.split('.')[:2])}"


async def on_hello(ctx: Context, session: Peer, req: Hello) -> None:
    if session.user is not None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "hello was already said")
    if not ctx.fanout.available:
        # A node between Redis incarnations: what its sessions were told, so the client
        # tries another node or comes back, instead of ``internal`` from the store read.
        raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server lost its cluster store")
    key = req.nick.lower()
    # A hello without credentials is a guest's: the claim reads the nick's row anyway (in the
    # store's writer) and says if it is an account's, so it is not read here first.
    guest = req.token is None and req.password is None and not ctx.config.require_account
    record = None if guest else await ctx.store.lookup_user(key)
    account = record.account if record else None
    resume: str | None = None
    lookups = ctx.dms.lookups  # before the claim (see below)
    if account is None and req.token is None:
        if ctx.config.require_account:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "this server admits registered users only")
        identity, resume = await _claim_guest(ctx, req)
        if identity is None:
            # An account was created for the nick meanwhile: it needs its credentials.
            record = await ctx.store.lookup_user(key)
            account = record.account if record else None
            if account is None:  # ... and removed again at once: let the client retry
                raise ProtocolError(ErrorCode.NICK_TAKEN, f"{req.nick} is changing hands")
    if account is not None or req.token is not None:
        session.credential = await ctx.authn.authenticate(session, key, req, account)
        assert account is not None  # a token authenticates only an existing account
        identity = Identity(account.nick, account.ident or key, account)
        resume = None
    assert identity is not None
    admin = account is not None and account.admin
    # A guest identity begun by this hello whose welcome never goes out has a resume nobody
    # knows: it is let go at once, since holding it would only lock its owner out of the nick.
    unknown_resume = resume is not None and resume != req.resume
    if unknown_resume:
        # A new identity: the address spends a token, or the identity ends at once.
        try:
            await may_begin_guest(ctx.config, ctx.buckets, session.addr)
        except ProtocolError:
            await ctx.store.guest_left(identity.ident, 0.0)
            raise
    try:
        first = await ctx.fanout.connect(session, req.nick, admin=admin, ident=identity.ident)
    except BaseException:
        if resume is not None:
            hold = 0.0 if unknown_resume else _hold(ctx, session)
            await ctx.store.guest_left(identity.ident, hold)
        raise
    user = ctx.user(session)
    if session.closing:
        # The connection went away while we awaited: undo the presence it just gained.
        if unknown_resume:
            session.guest_hold = 0.0
        ctx.registry.spawn(leave(ctx, session))
        return
    log.info("%s is %s%s", session.peer, user.nick, " (admin)" if admin else "")
    welcome = Welcome(
        proto=PROTOCOL_VERSION,
        nick=user.nick,
        server=SERVER_NAME,
        max_frame=ctx.config.max_frame,
        max_text=ctx.config.max_text,
        max_topic=ctx.config.max_topic,
        admin=admin,
        account=account is not None,
        epoch=await ctx.store.epoch(),
        guest_hold=round(ctx.config.guest_hold),
        resume=resume,
        motd=ctx.config.motd or None,
    )
    ctx.reply(session, req, welcome)
    if first:
        online = encode(OnlineEvent(nick=user.nick, ts=now()))
        # An identity this hello began has exchanged no DMs: no peers to read (the same as
        # reading them the moment it began; a DM racing with that is racing with any read).
        peers = [] if unknown_resume else await _dm_peers(ctx, user)
        ctx.fanout.to_users([user.key, *peers], online)
    if ctx.fanout.sends_undelivered:
        return
    # An identity this hello began has an empty queue unless a DM's sender read it from the
    # store since the claim (DmDelivery.lookups); one counted from now on finds it online.
    if not unknown_resume or ctx.dms.lookups != lookups:
        await ctx.dms.deliver_undelivered(user, session)


async def _claim_guest(ctx: Context, req: Hello) -> tuple[Identity | None, str | None]:
    """The guest identity this hello continues or begins, and its resume secret.

    None if the nick turned out to be an account's; ``nick_taken`` (saying for how long) if
    another guest identity holds it.
    """
    new = new_resume()
    claim = await ctx.store.claim_guest(
        req.nick,
        resume_hash(req.resume) if req.resume is not None else None,
        resume_hash(new),
        ctx.config.guest_hold,
    )
    if claim.status is ClaimStatus.ACCOUNT:
        return None, None
    if claim.status is ClaimStatus.TAKEN:
        raise nick_taken(req.nick, claim.held_until)
    assert claim.identity is not None
    return claim.identity, new if claim.status is ClaimStatus.NEW else req.resume


async def _dm_peers(ctx: Context, user: User) -> list[str]:
    """Whom a user's presence concerns besides its rooms: those it exchanged a DM with."""
    return dm_peer_keys(await ctx.store.dm_streams(user.ident), user.key)


def _hold(ctx: Context, session: Peer) -> float:
    """How long the session's guest identity is held once it ends."""
    return ctx.config.guest_hold if session.guest_hold is None else session.guest_hold


async def leave(ctx: Context, session: Peer) -> None:
    """Detach a closed session; if it was its user's last, announce that the user left.

    ``offline`` goes to the rooms it was in and its DM peers only (rev 2); a guest identity
    is held for ``guest_hold`` seconds from now.
    """
    rooms = await ctx.fanout.disconnect(session)
    if rooms is None:
        return
    user = ctx.user(session)
    peers = await _dm_peers(ctx, user)  # before the identity may end (a hold of 0)
    if session.credential is None:
        await ctx.store.guest_left(user.ident, _hold(ctx, session))
    ts = now()
    audience: set[str] = set(peers)
    for room in rooms:
        parted = PartedEvent(room=room, nick=user.nick, ts=ts, reason="quit")
        ctx.fanout.to_room(room, encode(parted))
        audience.update(member.lower() for member in await ctx.fanout.members(room))
    audience.discard(user.key)
    if audience:
        ctx.fanout.to_users(audience, encode(OfflineEvent(nick=user.nick, ts=ts)))


#: How long a ``pong`` waits for the events of the session's earlier requests (over Redis:
#: on their way back through the subscription; a millisecond or two). Short: a Redis stall
#: must not make a client's keepalive look dead.
PONG_WAIT = 1.0


async def on_ping(ctx: Context, session: Peer, req: Ping) -> None:
    if session.user is not None:
        await ctx.fanout.caught_up(PONG_WAIT)
    ctx.reply(session, req, Pong())


async def on_bye(ctx: Context, session: Peer, req: Bye) -> None:
    # What it owes includes the events of its own requests: over Redis, still on their way.
    await ctx.fanout.caught_up()
    session.close()
