"""Handing a direct message to its recipient exactly once: live, or at its next ``hello``.

A DM to a recipient who is online and settled goes out live. Otherwise it is stored as
undelivered; if the recipient is online by the time it is committed, it is claimed
(atomically, in the store) for live delivery, unless a ``hello`` fetched it first. While a
``hello`` fetches the undelivered ones, live DMs wait behind them (``User.dm_held``), so a
user receives its DMs in the order they were sent.
"""

from __future__ import annotations

from imchat.protocol import encode_frame

from .fanout import Fanout
from .identities import DM_BATCH, written_to_any
from .peer import User
from .registry import Registry
from .store import Store
from .streams import StreamId


class DmDelivery:
    def __init__(self, store: Store, fanout: Fanout, registry: Registry) -> None:
        self.store = store
        self.fanout = fanout
        self.registry = registry

    async def deliver_undelivered(self, user: User) -> None:
        """Send a user who just came online the DMs kept for it, then those held meanwhile.

        In batches of :data:`DM_BATCH`, each removed from the queue only once written to one
        of the user's sessions (rev 2): a client that does not read keeps its DMs queued, and
        thousands are never loaded at once. The loop ends on an empty read, so a DM committed
        as undelivered while it runs is either in a later batch or claimed live after it.
        """
        user.dm_fetches += 1
        try:
            while user.sessions:
                batch = await self.store.peek_pending(user.ident, DM_BATCH)
                if not batch:
                    break
                for _, _, payload in batch:
                    self.fanout.to_users((user.key,), encode_frame(payload))
                if not await written_to_any(list(user.sessions)):
                    # Every session it went to ended first: still queued. Sessions that
                    # joined meanwhile did not get this batch: start again for them.
                    continue
                await self.store.drop_pending(user.ident, [(s, q) for s, q, _ in batch])
        finally:
            user.dm_fetches -= 1
        if not user.dm_fetches and user.dm_held:
            held, user.dm_held = user.dm_held, None
            for frame in held:
                self.fanout.to_users((user.key,), frame)

    def is_live(self, to_key: str) -> bool:
        """Whether a DM to ``to_key`` stored now goes out live (not kept as undelivered)."""
        recipient = self.fanout.user(to_key)
        return recipient is not None and not recipient.dm_fetches

    def after_commit(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes, live: bool
    ) -> None:
        """Deliver a committed DM to its recipient (not to the sender's own sessions)."""
        if live:
            self.hand_over(to_key, to_ident, stream, seq, frame)
            return
        recipient = self.fanout.user(to_key)
        if recipient is not None and recipient.ident == to_ident and not recipient.dm_fetches:
            self.registry.spawn(self._claim(to_key, to_ident, stream, seq, frame))
        # else offline, or its hello's delivery loop is running and will read it from the queue

    async def _claim(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes
    ) -> None:
        if await self.store.claim_pending(to_ident, stream, seq):
            self.hand_over(to_key, to_ident, stream, seq, frame)
        # else a hello fetched it and delivered it

    def hand_over(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes
    ) -> None:
        recipient = self.fanout.user(to_key)
        if recipient is None or recipient.ident != to_ident:
            # Gone between the check and the commit: deliver at the next hello.
            self.registry.spawn(self.store.set_pending(to_ident, stream, seq))
        elif recipient.dm_fetches:
            # After the older DMs being fetched.
            if recipient.dm_held is None:
                recipient.dm_held = []
            recipient.dm_held.append(frame)
        else:
            self.fanout.to_users((to_key,), frame)
