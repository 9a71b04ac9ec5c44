"""Requests sent back to back in one write: replies in request order, each before its events."""

from __future__ import annotations

from pathlib import Path

from imchat.client import Connection
from imchat.protocol import encode_message
from imchat.server import ChatServer, ServerConfig


async def test_pipelined_requests_keep_order(tmp_path: Path) -> None:
    server = ChatServer(ServerConfig(port=0, data_dir=tmp_path, rate=0, addr_rate=0))
    await server.start()
    try:
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello("alice")
        await conn.request("join", room="lobby")
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
        await conn.close()
    finally:
        await server.stop()
