"""Seeded fuzzing: mangled requests never hurt the server, and every answer is well formed."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from conftest import TIMEOUT, Clients, join, next_event

from imchat.protocol import encode_frame, encode_message

VALID = [
    {"type": "hello", "proto": 1, "nick": "fuzz"},
    {"type": "ping"},
    {"type": "join", "room": "lobby"},
    {"type": "part", "room": "lobby"},
    {"type": "say", "room": "lobby", "text": "hi", "cid": "c1"},
    {"type": "say", "room": "lobby", "text": "waves", "kind": "action"},
    {"type": "topic", "room": "lobby", "text": "t"},
    {"type": "rooms"},
    {"type": "users"},
    {"type": "dm", "to": "victim", "text": "hi"},
    {"type": "announce", "text": "hi"},
    {"type": "history", "room": "lobby", "after": 0, "limit": 5},
    {"type": "history", "with": "victim", "before": 3},
    {"type": "history", "announcements": True},
]
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**63,
    2**64,
    "",
    "x" * 70,
    "\u0000",
    "#Lobby",
    "ADMIN",
    [],
    {},
    [1, "a"],
    {"type": "ping"},
    "\ud7ff",
    "😀" * 5,
    "a\nb",
    1e308,
]
KEYS = [
    "type",
    "id",
    "room",
    "text",
    "nick",
    "proto",
    "to",
    "cid",
    "kind",
    "after",
    "before",
    "limit",
    "with",
    "announcements",
    "token",
    "password",
]


def mangle(rng: random.Random) -> bytes:
    """A payload near a valid request: a field changed, dropped or added, or bytes damaged."""
    message = dict(rng.choice(VALID))
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        if action < 0.4:
            message[rng.choice(KEYS)] = rng.choice(ODD_VALUES)
        elif action < 0.6 and message:
            message.pop(rng.choice(list(message)))
        else:
            message["id"] = rng.choice([rng.randint(-5, 10**6), f"id-{rng.random()}"])
    payload = json.dumps(message).encode()
    if rng.random() < 0.06 and payload:
        i = rng.randrange(len(payload))
        payload = payload[:i] + bytes([rng.randrange(256)]) + payload[i + 1 :]
    if rng.random() < 0.02:
        payload = payload[: rng.randrange(len(payload) + 1)]
    return payload


@pytest.mark.timeout(60)
@pytest.mark.server_config(rate=0)
@pytest.mark.parametrize("seed", range(8))
async def test_mangled_requests(server: Any, connect: Clients, seed: int) -> None:
    victim = await connect("victim")
    await join(victim, "lobby")
    rng = random.Random(seed)
    for _ in range(25):
        raw = await connect.raw()
        frames = [mangle(rng) for _ in range(rng.randint(1, 8))]
        raw.send_bytes(
            b"".join(encode_frame(f) if f else b"\x00\x00\x00\x00" for f in frames)
            + encode_message({"type": "ping", "id": "end"})
        )
        answers = []
        while True:
            try:
                answer = await raw.recv(TIMEOUT)  # well-formed JSON objects, checked by recv
            except EOFError:
                # only a fatal error ends the connection, and it is the last frame
                assert answers, frames
                assert answers[-1]["type"] == "error", (frames, answers)
                assert answers[-1]["code"] in ("bad_frame", "auth_failed"), (frames, answers)
                break
            answers.append(answer)
            assert isinstance(answer.get("type"), str), answer
            if answer["type"] == "error":
                assert isinstance(answer["code"], str) and isinstance(answer["message"], str)
                assert answer["code"] != "internal", (frames, answer)
            if answer == {"type": "pong", "id": "end"}:
                break
        await raw.close()
    # the server is unharmed and the victim's session is intact
    ok = await victim.request("say", room="lobby", text="still standing")
    event = await next_event(
        victim, "msg", skip=frozenset({"online", "offline", "joined", "parted", "topic"})
    )
    while event["seq"] != ok["seq"]:  # fuzzers may have said things in lobby too
        event = await next_event(
            victim, "msg", skip=frozenset({"online", "offline", "joined", "parted", "topic"})
        )
    assert event["text"] == "still standing"
