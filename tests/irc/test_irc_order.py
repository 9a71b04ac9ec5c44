"""What an IRC client is shown comes in the order it was said, also around the history a JOIN
replays: an in-process server whose store read is held open at will (a Redis read takes a
round trip, during which other messages are said)."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import RawClient
from irc_client import IrcClient, sasl_plain

from imchat.server import accounts


async def test_join_replay_comes_before_what_is_said_meanwhile(servers: Any) -> None:
    """A message said while a JOIN's replay is read from the store reaches the IRC client
    after the replay, in seq order. It came first, above the older messages of the replay."""
    server = await servers.start(irc_port=0)
    store = server.hub.store
    native = await RawClient.open(server.port)
    await native.hello("talker")
    await native.request({"type": "join", "room": "busy", "id": 1})
    await native.request({"type": "say", "room": "busy", "text": "old one", "id": 2})

    reading, go_on = asyncio.Event(), asyncio.Event()
    history = store.history

    async def held_history(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        await go_on.wait()
        return await history(*args, **kwargs)

    store.history = held_history
    client = await IrcClient.open(server.irc_ports[0])
    try:
        await client.register("late")
        client.send("JOIN #busy")
        await asyncio.wait_for(reading.wait(), 5)  # the replay's read is under way
        store.history = history
        await native.request({"type": "say", "room": "busy", "text": "new one", "id": 3})
        go_on.set()
        await client.expect(lambda r: r.command == "PRIVMSG" and r.params[-1] == "new one")
        said = [r.params[-1] for r in client.seen if r.command == "PRIVMSG"]
        assert len(said) == 2 and said[0].endswith("] old one"), said
    finally:
        go_on.set()
        await client.close()
        await native.close()


async def test_a_dm_waiting_for_an_irc_account_stays_queued_until_registration(
    servers: Any,
) -> None:
    """A DM kept for an account is dropped from its queue only once written to one of its
    sessions (revision 2). An IRC client logged in by SASL holds what comes before its CAP
    END; one that went away before CAP END took the DM with it, never shown anywhere."""
    server = await servers.start(irc_port=0)
    await accounts.add_user(server.store, "ivy", None)
    token = await accounts.create_token(server.store, "ivy", "test")
    sender = await RawClient.open(server.port)
    await sender.hello("sender")
    reply = await sender.request({"type": "dm", "to": "ivy", "text": "kept for you", "id": 1})
    assert reply["type"] == "ok"

    client = await IrcClient.open(server.irc_ports[0])
    client.send("CAP LS 302", "NICK ivy", "USER ivy 0 * :ivy", "CAP REQ :sasl")
    await client.expect(lambda r: r.command == "CAP" and r.params[1] == "ACK")
    client.send("AUTHENTICATE PLAIN")
    await client.expect("AUTHENTICATE")
    client.send("AUTHENTICATE " + sasl_plain("ivy", "token:" + token))
    await client.expect("903")
    await client.close()  # gone before CAP END: the DM was never shown

    native = await RawClient.open(server.port)
    try:
        await native.hello("ivy", token=token)
        dm = await native.recv_skip()
        assert (dm["type"], dm["text"]) == ("dm", "kept for you")
    finally:
        await native.close()
        await sender.close()
