"""A Sentinel failover to a replica that lagged: acknowledged messages are lost (replication
is asynchronous, Redis documents it), and the store gets a new epoch so that no client takes
the seqs handed out again for the old messages (issue 13).

The replica replicates through a link the test black-holes, so it really misses writes the
primary acknowledged (checked with ``INFO replication`` offsets); then the primary is killed
with SIGKILL and the Sentinels promote the replica.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imchat.client.resume import ResumeStore
from imchat.client.servers import Endpoint
from imchat.client.session import (
    Backoff,
    ChatSession,
    ConvKey,
    HistoryReset,
    MessagesAdded,
    SessionEvent,
    State,
)

from .cluster_support import TIMEOUT, Clients, Cluster, Node, connect_retrying
from .sentinel_support import running_sentinels

LOBBY = ConvKey.room("lobby")
WITH_SENDER = ConvKey.dm("sender")


class Witness:
    """What a client takes as valid: per conversation, seq -> text, voided by a reset.

    ``conflicts`` lists every seq the client was given twice with different messages while
    it still held the first: what issue 13 is about.
    """

    def __init__(self) -> None:
        self.valid: dict[ConvKey, dict[int, str]] = {}
        self.conflicts: list[tuple[ConvKey, int, str, str]] = []
        self.resets: list[HistoryReset] = []
        self._changed = asyncio.Event()

    def __call__(self, event: SessionEvent) -> None:
        if isinstance(event, HistoryReset):
            self.resets.append(event)
            for conv, seqs in self.valid.items():
                if event.conv is None or event.conv == conv:
                    for seq in [s for s in seqs if event.conv is None or s > event.last_seq]:
                        del seqs[seq]
        elif isinstance(event, MessagesAdded):
            seqs = self.valid.setdefault(event.conv, {})
            for item in event.items:
                if isinstance(item, dict) and isinstance(item.get("seq"), int):
                    seq, text = item["seq"], str(item.get("text"))
                    if seqs.get(seq, text) != text:
                        self.conflicts.append((event.conv, seq, seqs[seq], text))
                    seqs[seq] = text
        self._changed.set()

    def has(self, conv: ConvKey, seq: int, text: str) -> bool:
        return self.valid.get(conv, {}).get(seq) == text

    async def until(self, condition: Callable[[], bool], timeout: float = 4 * TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def _epoch_on(clients: Clients, node: Node, nick: str) -> str:
    client = await connect_retrying(clients, node, nick)
    assert client.conn.welcome is not None
    return str(client.conn.welcome["epoch"])


def _offset(info: Any) -> int:
    return int(info["master_repl_offset"])


@pytest.mark.timeout(90)
async def test_failover_to_a_lagging_replica_voids_the_seqs_it_lost(
    tmp_path: Path, clients: Clients
) -> None:
    # One replica (the one promoted), replicating through a link the test can black-hole; a
    # long failover-timeout keeps the Sentinels from re-pointing it at the primary meanwhile.
    with running_sentinels(
        tmp_path / "redis", replicas=1, failover_timeout_ms=60000, through_link=True
    ) as redis:
        assert redis.link is not None
        cluster = Cluster(tmp_path, f"imchat-test-{uuid.uuid4().hex}:", redis_url=redis.url)
        witness = Witness()
        reader_task: asyncio.Task[None] | None = None
        reader: ChatSession | None = None
        try:
            nodes = cluster.start_many(2, node_timeout=3.0)  # no --redis-wait: the default
            old_epoch = await _epoch_on(clients, nodes[1], "probe")
            sender = await connect_retrying(clients, nodes[0], "sender", room="lobby")
            reader = ChatSession(
                "reader",
                servers=(Endpoint("127.0.0.1", nodes[1].port),),
                rooms=("lobby",),
                resumes=ResumeStore(tmp_path / "resumes"),
                backoff=Backoff(base=0.2, cap=1.0),
            )
            reader.add_listener(witness)
            reader_task = asyncio.create_task(reader.run())
            assert reader is not None
            # Connected once it has joined the lobby and caught up.
            await witness.until(lambda: reader is not None and reader.state is State.CONNECTED)

            async def say(text: str) -> int:
                reply = await sender.request("say", room="lobby", text=text)
                return int(reply["seq"])

            async def dm(text: str) -> int:
                reply = await sender.request("dm", to="reader", text=text)
                return int(reply["seq"])

            # Replicated: the replica confirms every write so far.
            kept = [await say(f"kept{i}") for i in range(10)]
            kept_dms = [await dm(f"kept-dm{i}") for i in range(3)]
            assert redis.primary.command("WAIT", "1", "5000") == 1
            # Acknowledged (and delivered) while the replica gets none of it.
            redis.link.black_hole()
            lost = [await say(f"lost{i}") for i in range(20)]
            lost_dms = [await dm(f"lost-dm{i}") for i in range(5)]
            await witness.until(
                lambda: (
                    witness.has(LOBBY, lost[-1], "lost19")
                    and witness.has(WITH_SENDER, lost_dms[-1], "lost-dm4")
                )
            )
            replica_offset = _offset(redis.replicas[0].command("INFO", "replication"))
            primary_offset = _offset(redis.primary.command("INFO", "replication"))
            assert replica_offset < primary_offset  # the acknowledged writes are not on it

            redis.primary.kill()
            await redis.sentinels[0].wait_log("+switch-master", timeout=4 * TIMEOUT)
            # The promoted replica has seqs up to the last kept ones; the nodes saw more.
            sender = await connect_retrying(clients, nodes[0], "sender", room="lobby")
            new_epochs = {await _epoch_on(clients, node, "probe") for node in nodes}
            assert len(new_epochs) == 1 and old_epoch not in new_epochs
            logged = "".join(line for node in nodes for line in node.lines)
            assert "Redis lost acknowledged writes" in logged

            # The seqs of the lost messages go to new ones: the reader must show them.
            again = [await say(f"new{i}") for i in range(5)]
            again_dm = await dm("new-dm")
            assert again == list(range(kept[-1] + 1, kept[-1] + 6))
            assert again_dm == kept_dms[-1] + 1
            await witness.until(
                lambda: (
                    witness.has(LOBBY, again[-1], "new4")
                    and witness.has(WITH_SENDER, again_dm, "new-dm")
                )
            )
            assert any(reset.conv is None for reset in witness.resets)  # the new epoch
            assert witness.conflicts == []
            history = await sender.request("history", room="lobby", limit=100)
            assert witness.valid[LOBBY] == {m["seq"]: m["text"] for m in history["messages"]}
            dms = await sender.request("history", limit=100, **{"with": "reader"})
            assert witness.valid[WITH_SENDER] == {m["seq"]: m["text"] for m in dms["messages"]}
        finally:
            if reader is not None and reader_task is not None:
                await reader.close()
                await asyncio.wait_for(reader_task, TIMEOUT)
            for node in cluster.nodes:
                node.stop()
