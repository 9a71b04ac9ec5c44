"""IRC ``JOIN`` of a new channel spends the same room-creation budget as a native ``join``
(one implementation: the hub's join handler). See ``tests/test_room_creation.py``."""

from __future__ import annotations

from conftest import RawClient, Servers
from irc_client import IrcClient


async def test_irc_join_spends_the_guest_room_budget(servers: Servers) -> None:
    server = await servers.start(
        irc_port=0, rate=1000.0, burst=1000, guest_rooms_burst=2, addr_rooms_per_minute=0
    )
    irc = await IrcClient.open(server.irc_ports[0])
    try:
        await irc.register("ircguest")
        for name in ("#one", "#two"):
            assert (await irc.join(name))[-1].command == "366"
        irc.send("JOIN #three")
        refused = await irc.expect("FAIL")
        assert refused.params[:2] == ["JOIN", "RATE_LIMITED"], refused.raw
    finally:
        await irc.close()
    raw = await RawClient.open(server.port)
    try:
        await raw.hello("native")
        listed = await raw.request({"type": "rooms", "id": "list"})
        assert [r["room"] for r in listed["rooms"]] == ["one", "two"]
    finally:
        await raw.close()
