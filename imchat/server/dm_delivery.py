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
        """Send a user who just came online the DMs kept for it, then those held meanwhile."""
        user.dm_fetches += 1
        try:
            payloads = await self.store.take_pending(user.key)
        finally:
            user.dm_fetches -= 1
        for payload in payloads:
            self.fanout.to_users((user.key,), encode_frame(payload))
        if not user.dm_fetches and user.dm_held:
            held, user.dm_held = user.dm_held, []
            for frame in held:
                self.fanout.to_users((user.key,), frame)

    def is_live(self, to_key: str) -> bool:
        """Whether a DM to ``to_key`` stored now goes out live (not kept as undelivered)."""
        recipient = self.fanout.user(to_key)
        return recipient is not None and not recipient.dm_fetches

    def after_commit(
        self, to_key: str, stream: StreamId, seq: int, frame: bytes, live: bool
    ) -> None:
        """Deliver a committed DM to its recipient (not to the sender's own sessions)."""
        if live:
            self.hand_over(to_key, stream, seq, frame)
        elif self.fanout.user(to_key) is not None:
            self.registry.spawn(self._claim(to_key, stream, seq, frame))

    async def _claim(self, to_key: str, stream: StreamId, seq: int, frame: bytes) -> None:
        if await self.store.claim_pending(to_key, stream, seq):
            self.hand_over(to_key, stream, seq, frame)
        # else a hello fetched it and delivered it

    def hand_over(self, to_key: str, stream: StreamId, seq: int, frame: bytes) -> None:
        recipient = self.fanout.user(to_key)
        if recipient is None:
            # Gone between the check and the commit: deliver at the next hello.
            self.registry.spawn(self.store.set_pending(to_key, stream, seq))
        elif recipient.dm_fetches:
            recipient.dm_held.append(frame)  # after the older DMs being fetched
        else:
            self.fanout.to_users((to_key,), frame)
