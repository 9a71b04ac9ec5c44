"""Session requests (hello, ping, bye) and what a user's arrival and departure announce."""

from __future__ import annotations

import logging

import imchat
from imchat.protocol import PROTOCOL_VERSION, Bye, ErrorCode, Hello, Ping, ProtocolError
from imchat.protocol import encode_message as encode
from imchat.protocol.events import OfflineEvent, OnlineEvent, PartedEvent, Pong, Welcome

from ..context import Context, now
from ..peer import Peer

log = logging.getLogger(__name__)

SERVER_NAME = f"imchat/{'.'.join(imchat.__version__.split('.')[:2])}"


async def on_hello(ctx: Context, session: Peer, req: Hello) -> None:
    if session.user is not None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "hello was already said")
    key = req.nick.lower()
    record = await ctx.store.lookup_user(key)
    account = record.account if record else None
    if account is not None or req.token is not None:
        session.credential = await ctx.authn.authenticate(session, key, req, account)
    elif ctx.config.require_account:
        raise ProtocolError(ErrorCode.AUTH_FAILED, "this server admits registered users only")
    if record is None:
        try:
            await ctx.store.remember_user(req.nick)
        except Exception as exc:
            # A full disk must not lock guests out: the guest is only not remembered (DMs to
            # it while it is offline are refused like the messages the full store refuses).
            log.warning("could not remember guest %s: %s", req.nick, exc)
    admin = account is not None and account.admin
    first = await ctx.fanout.connect(session, req.nick, admin=admin, exclusive=account is None)
    user = session.user
    assert user is not None
    if session.closing:
        # The connection went away while we awaited: undo the presence it just gained.
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
        motd=ctx.config.motd or None,
    )
    ctx.reply(session, req, welcome)
    if first:
        ctx.fanout.to_everyone(encode(OnlineEvent(nick=user.nick, ts=now())))
    await ctx.dms.deliver_undelivered(user)


async def leave(ctx: Context, session: Peer) -> None:
    """Detach a closed session; if it was its user's last, announce that the user left."""
    rooms = await ctx.fanout.disconnect(session)
    if rooms is None:
        return
    user = ctx.user(session)
    ts = now()
    for room in rooms:
        parted = PartedEvent(room=room, nick=user.nick, ts=ts, reason="quit")
        ctx.fanout.to_room(room, encode(parted))
    ctx.fanout.to_everyone(encode(OfflineEvent(nick=user.nick, ts=ts)))


async def on_ping(ctx: Context, session: Peer, req: Ping) -> None:
    ctx.reply(session, req, Pong())


async def on_bye(ctx: Context, session: Peer, req: Bye) -> None:
    session.close()
