"""Several nodes on one machine sharing its port (``--reuse-port``): the kernel spreads the
connections, and users on either node are in one chat."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import TEST_REDIS_URL, free_port
from typer.testing import CliRunner

import imchat.server
from imchat import cli
from imchat.server.config import ServerConfig

from .cluster_support import TIMEOUT, Clients, Cluster, is_type, server_command

#: The hello line a node logs for each user ("127.0.0.1:40000 is u7").
HELLO = re.compile(r" is (u\d+)\b")


def users_on(node_lines: list[str]) -> set[str]:
    return {m.group(1) for line in node_lines if (m := HELLO.search(line))}


async def test_two_nodes_share_one_port_and_one_room(cluster: Cluster, clients: Clients) -> None:
    port, irc, http = free_port(), free_port(), free_port()
    shared = ("--reuse-port", "--irc-port", str(irc), "--http-port", str(http))
    nodes = [cluster.start(port=port, extra=shared) for _ in range(2)]
    for node in nodes:
        node.wait_listening()
    assert [node.port for node in nodes] == [port, port]
    # The kernel picks a node per connection by a hash of its addresses: with 24 clients,
    # all on one node has a chance of 2 in 2**24.
    users = [await clients.connect(nodes[0], f"u{i}") for i in range(24)]
    for user in users:
        await user.request("join", room="lobby")
    await nodes[1].wait_log(" is u")
    on = [users_on(node.lines) for node in nodes]
    assert on[0] and on[1] and on[0] | on[1] == {f"u{i}" for i in range(24)}
    assert not on[0] & on[1]
    reply = await users[0].request("say", room="lobby", text="one port, two nodes")
    for user in users:
        msg = await user.wait_for(is_type("msg", room="lobby", seq=reply["seq"]))
        assert (msg["from"], msg["text"]) == ("u0", "one port, two nodes")


def test_without_reuse_port_a_second_node_cannot_take_the_port(cluster: Cluster) -> None:
    port = free_port()
    first = cluster.start(port=port)
    first.wait_listening()
    second = cluster.start(port=port)
    assert second.proc.wait(TIMEOUT) == 1
    second.stop()
    assert any("cannot start the server" in line for line in second.lines)
    assert first.proc.poll() is None


def test_reuse_port_needs_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        server_command("--port", "0", "--data-dir", str(tmp_path), "--reuse-port"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "--reuse-port needs --redis" in result.stderr


def test_imchat_reuse_port_reaches_the_server_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[ServerConfig] = []

    def capture(config: ServerConfig) -> NoReturn:
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(imchat.server, "ChatServer", capture)
    CliRunner().invoke(
        cli.app, ["server", "--redis", TEST_REDIS_URL], env={"IMCHAT_REUSE_PORT": "1"}
    )
    assert [config.reuse_port for config in seen] == [True]
