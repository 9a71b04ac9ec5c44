"""Handing a direct message to its recipient's sessions exactly once each: live, or after a
``hello``.

A DM to a recipient with a settled session (one not reading the queue) goes out live.
Otherwise it is stored as undelivered. Every ``hello`` reads the queue for its own session:
a session that never reads holds nothing back from the identity's others. While a session
reads the queue, live DMs for it wait behind it (:class:`QueueRead`), so each session receives
its DMs in the order they were sent; a DM committed as undelivered while every session reads
the queue is read there, or claimed (atomically, in the store) for live delivery if a session
settled meanwhile.

A ``hello`` that begins a guest identity reads no queue unless a DM may have been queued for
that identity since its claim (:attr:`DmDelivery.lookups`): its identity id is new, so only a
DM whose sender read the identity from the store after the claim can be queued for it, and
such a read counts before the DM is stored. A connect storm of new guests reads nothing.
"""

from __future__ import annotations

from imchat.protocol import encode_frame

from .fanout import Fanout
from .identities import DM_BATCH, written_to_any
from .peer import Peer, User
from .registry import Registry
from .store import Store
from .streams import StreamId

DmKey = tuple[StreamId, int]


class QueueRead:
    """One session's reading of its identity's queue (kept here, not on the session: no
    field per idle connection)."""

    __slots__ = ("held", "recheck", "sent")

    def __init__(self) -> None:
        #: Read from the queue and sent to this session.
        self.sent: set[DmKey] = set()
        #: Live DMs waiting until the queue is read, in the order they were committed.
        self.held: dict[DmKey, bytes] = {}
        #: A DM was committed as undelivered meanwhile: an empty read is not the end.
        self.recheck = False


class DmDelivery:
    def __init__(self, store: Store, fanout: Fanout, registry: Registry) -> None:
        self.store = store
        self.fanout = fanout
        self.registry = registry
        self._reads: dict[Peer, QueueRead] = {}
        #: DMs whose recipient was read from the store (not online here), counted right after
        #: the read: a DM can be queued for an identity not online here only after that.
        #: A hello that began an identity and sees this unchanged since before its claim knows
        #: its queue is empty (the fan-out's connect does not yield, so a DM counted later
        #: finds its recipient online and goes out live).
        self.lookups = 0

    async def deliver_undelivered(self, user: User, session: Peer) -> None:
        """Send a session that just said hello the DMs kept for its identity, then those held
        for it meanwhile.

        In batches of :data:`DM_BATCH`, each removed from the queue only once written to a
        session (rev 2): a client that does not read keeps its DMs queued, and thousands are
        never loaded at once. Another session of the identity reads the queue for itself.
        """
        read = self._reads[session] = QueueRead()
        try:
            while not session.closing:
                batch = await self.store.peek_pending(user.ident, DM_BATCH)
                if not batch:
                    if not read.recheck:
                        break
                    read.recheck = False
                    continue
                for stream, seq, payload in batch:
                    if (stream, seq) not in read.sent and (stream, seq) not in read.held:
                        read.sent.add((stream, seq))
                        session.send(encode_frame(payload))
                if not await written_to_any([session]):
                    return  # ended first: they stay queued for the identity's next hello
                await self.store.drop_pending(user.ident, [(s, q) for s, q, _ in batch])
        finally:
            del self._reads[session]
        if not session.closing:
            for frame in read.held.values():
                session.send(frame)

    def is_live(self, to_key: str) -> bool:
        """Whether a DM to ``to_key`` stored now goes out live (not kept as undelivered)."""
        recipient = self.fanout.user(to_key)
        return recipient is not None and self._has_settled(recipient)

    def _has_settled(self, user: User) -> bool:
        reads = self._reads
        return not reads or any(s not in reads for s in user.sessions)

    def after_commit(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes, live: bool
    ) -> None:
        """Deliver a committed DM to its recipient (not to the sender's own sessions)."""
        if live:
            self.hand_over(to_key, to_ident, stream, seq, frame)
            return
        recipient = self.fanout.user(to_key)
        if recipient is None or recipient.ident != to_ident:
            return  # offline: delivered at its next hello
        if self._has_settled(recipient):
            self.registry.spawn(self._claim(to_key, to_ident, stream, seq, frame))
        for session in recipient.sessions:
            read = self._reads.get(session)
            if read is not None:
                read.recheck = True  # its next empty read is not the end

    async def _claim(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes
    ) -> None:
        if await self.store.claim_pending(to_ident, stream, seq):
            self.hand_over(to_key, to_ident, stream, seq, frame)
        # else a session read it from the queue and was written it

    def hand_over(
        self, to_key: str, to_ident: str, stream: StreamId, seq: int, frame: bytes
    ) -> None:
        recipient = self.fanout.user(to_key)
        if recipient is None or recipient.ident != to_ident:
            # Gone between the check and the commit: deliver at the next hello.
            self.registry.spawn(self.store.set_pending(to_ident, stream, seq))
            return
        for session in recipient.sessions:
            read = self._reads.get(session)
            if read is None:
                session.send(frame)
            elif (stream, seq) not in read.sent:
                read.held[(stream, seq)] = frame  # after the older DMs it is reading
