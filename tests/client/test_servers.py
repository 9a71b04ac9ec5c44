"""Several addresses of one service: parsing ``--host`` and trying them in turn."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import free_port

from imchat.client.servers import BadServerList, Endpoint, connect_first, parse_servers


def test_parse_one_or_several_servers() -> None:
    assert parse_servers("chat.example", 7667) == (Endpoint("chat.example", 7667),)
    assert parse_servers("a:7001, b ,[::1]:7003,::1", 7667) == (
        Endpoint("a", 7001),
        Endpoint("b", 7667),
        Endpoint("::1", 7003),
        Endpoint("::1", 7667),
    )
    assert str(Endpoint("::1", 7003)) == "[::1]:7003"


@pytest.mark.parametrize("spec", ["", " , ", "a:", "a:port", "a:70000", ":7667", "[::1]:x"])
def test_bad_server_lists_say_which_part(spec: str) -> None:
    with pytest.raises(BadServerList):
        parse_servers(spec, 7667)


async def test_connect_first_skips_a_dead_node_and_names_the_service(server: Any) -> None:
    dead = free_port()
    servers = (Endpoint("127.0.0.1", dead), Endpoint("127.0.0.1", server.port))
    conn, index = await connect_first(servers)
    try:
        assert index == 1
        # Named after the first address: a guest's resume secret is kept under it.
        assert (conn.host, conn.port) == ("127.0.0.1", dead)
        assert (await conn.request("ping"))["type"] == "pong"
    finally:
        await conn.close()


async def test_connect_first_raises_when_no_node_answers() -> None:
    with pytest.raises(OSError):
        await connect_first(
            (Endpoint("127.0.0.1", free_port()), Endpoint("127.0.0.1", free_port()))
        )
