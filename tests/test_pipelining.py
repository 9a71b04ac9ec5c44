"""Requests sent back to back in one write: replies in request order, each before its events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import TIMEOUT, Clients, admin_token, embedded_alice, join

from imchat.protocol import encode_message


async def test_pipelined_requests_keep_order(tmp_path: Path) -> None:
    async with embedded_alice(tmp_path) as (_, conn):
        while not conn.events.empty():
            conn.events.get_nowait()
        # 200 says interleaved with a say to a room we are not in and a ping, in one write.
        frames = []
        for i in range(200):
            frames.append(
                encode_message({"type": "say", "room": "lobby", "text": f"m{i}", "id": i})
            )
            if i % 50 == 25:
                frames.append(
                    encode_message(
                        {"type": "say", "room": "elsewhere", "text": "x", "id": f"bad{i}"}
                    )
                )
                frames.append(encode_message({"type": "ping", "id": f"ping{i}"}))
        conn.send_raw(b"".join(frames))
        seen: list[object] = []
        msg_seqs: list[int] = []
        acked: set[int] = set()
        while len(msg_seqs) < 200:
            frame = await conn.next_event(10)
            if frame["type"] == "msg":
                # The event of a say arrives after that say's reply.
                assert frame["seq"] in acked
                msg_seqs.append(frame["seq"])
            else:
                seen.append(frame.get("id"))
                if frame["type"] == "ok":
                    acked.add(frame["seq"])
                elif frame["type"] == "error":
                    assert frame["code"] == "not_in_room"
                else:
                    assert frame["type"] == "pong"
        expected: list[object] = []
        for i in range(200):
            expected.append(i)
            if i % 50 == 25:
                expected += [f"bad{i}", f"ping{i}"]
        assert seen == expected
        assert msg_seqs == list(range(1, 201))


async def test_a_burst_of_says_checks_the_output_bound_once(tmp_path: Path) -> None:
    """The hub checks what a session owes (and the server's output bound) before each request
    of a batch, except right after a message it started without waiting: nothing was queued
    or could run since, so a burst of says is checked once. A request between them is
    followed by a check again."""
    async with embedded_alice(tmp_path) as (server, conn):
        registry = server.hub.registry
        checks: list[int] = []
        saturated = registry.saturated

        def counting() -> bool:
            checks.append(1)
            return saturated()

        registry.saturated = counting  # type: ignore[method-assign]
        say = encode_message({"type": "say", "room": "lobby", "text": "hi"})
        ping = encode_message({"type": "ping"})

        async def one_batch(frames: list[bytes]) -> int:
            """Checks made handling ``frames`` sent in one write (read as one batch)."""
            checks.clear()
            conn.send_raw(b"".join([*frames, encode_message({"type": "ping", "id": "end"})]))
            while (await conn.next_event(10)).get("id") != "end":
                pass
            return len(checks)

        # The session's own look before the batch, then the hub's: the first request has
        # none, the second one, and none after a say started without waiting.
        assert await one_batch([say] * 20) == 1 + 1
        # say, say (checked), say; ping; say (checked: after the ping), say, say; ping.
        assert await one_batch([say] * 3 + [ping] + [say] * 3) == 1 + 2


async def test_a_run_of_say_dm_and_announce_reaches_a_bystander_in_request_order(
    server: Any, connect: Clients, data_dir: Path
) -> None:
    """One pipelined run of a room message, a DM to a user online here and an announcement:
    a user who gets all three gets them in request order, on either backend (over Redis the
    scripts publish as they run, so each append must reach the store in request order; a
    DM's used to wait for a task of its own, after the announcement queued behind it)."""
    peer = await connect("peer")
    await join(peer, "lobby")
    admin = await connect.raw()
    await admin.hello("admin", token=admin_token(data_dir))
    admin.send({"type": "join", "room": "lobby", "id": "j"})
    await admin.recv_skip()
    for round_ in range(5):
        admin.send_bytes(
            b"".join(
                encode_message(request)
                for request in (
                    {"type": "say", "room": "lobby", "text": f"say {round_}"},
                    {"type": "dm", "to": "peer", "text": f"dm {round_}"},
                    {"type": "announce", "text": f"announce {round_}"},
                )
            )
        )
        got = []
        while len(got) < 3:
            event = await peer.next_event(TIMEOUT)
            if event["type"] in ("msg", "dm", "announce"):
                got.append(event["text"])
        assert got == [f"say {round_}", f"dm {round_}", f"announce {round_}"]
