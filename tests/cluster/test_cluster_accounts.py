"""``imchat user``/``imchat token`` with IMCHAT_REDIS_URL act on the cluster's accounts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imchat.client import ConnectionClosed, ServerError

from .cluster_support import REDIS_URL, TIMEOUT, Clients, Cluster, is_type


def imchat(prefix: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMCHAT_")}
    env.update(IMCHAT_REDIS_URL=REDIS_URL, IMCHAT_REDIS_PREFIX=prefix)
    return subprocess.run(
        [sys.executable, "-m", "imchat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env=env,
    )


async def test_accounts_and_tokens_from_the_cli_hold_on_every_node(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    password = "correct horse"
    added = imchat(cluster.prefix, "user", "add", "Bob", "--password-stdin", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    listed = imchat(cluster.prefix, "user", "list")
    assert listed.returncode == 0 and "Bob" in listed.stdout and "admin" in listed.stdout
    for node in nodes:
        conn = await clients.connect_raw(node)
        welcome = await conn.hello("bob", password=password)
        assert welcome["nick"] == "bob"  # the spelling this hello chose
    # The nick is no longer a guest's on any node.
    with pytest.raises((ServerError, ConnectionClosed)):
        await (await clients.connect_raw(nodes[1])).hello("bob")
    created = imchat(cluster.prefix, "token", "create", "--user", "bob", "--label", "bot")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    for node in nodes:
        await (await clients.connect_raw(node)).hello("bob", token=token)
    tokens = imchat(cluster.prefix, "token", "list", "--user", "bob")
    token_id = next(line.split()[0] for line in tokens.stdout.splitlines() if "bot" in line)
    revoked = imchat(cluster.prefix, "token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises((ServerError, ConnectionClosed)):
        await (await clients.connect_raw(nodes[0])).hello("bob", token=token)


def test_cli_without_redis_says_so_in_one_line(prefix: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMCHAT_")}
    env.update(IMCHAT_REDIS_URL="redis://127.0.0.1:1/0", IMCHAT_REDIS_PREFIX=prefix)
    result = subprocess.run(
        [sys.executable, "-m", "imchat", "user", "list"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Redis" in result.stderr


async def test_account_created_on_a_cluster_ends_the_guest_holding_the_nick(
    cluster: Cluster, clients: Clients
) -> None:
    """Rev 2: accounts outrank guests, on every node, within the credential re-check."""
    nodes = cluster.start_many(2)
    squatter = await clients.connect(nodes[1], "carol")
    await squatter.request("join", room="lobby")
    password = "correct horse"
    added = imchat(
        cluster.prefix, "user", "add", "carol", "--password-stdin", stdin=password + "\n"
    )
    assert added.returncode == 0, added.stderr
    owner = await clients.connect_raw(nodes[0])
    welcome = await owner.hello("carol", password=password)
    assert welcome["account"] is True and "resume" not in welcome
    # The owner's login ends the guest identity on its node at once: fatal nick_taken.
    error = await squatter.wait_for(is_type("error"), TIMEOUT)
    assert error["code"] == "nick_taken"
    # It shares nothing with the account: not its rooms, not its DMs.
    with pytest.raises(ServerError) as caught:
        await owner.request("say", room="lobby", text="whose room?")
    assert caught.value.code == "not_in_room"
    assert (await owner.request("history", **{"with": "carol"}))["messages"] == []


async def test_every_node_has_the_same_epoch(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(3)
    epochs = set()
    for i, node in enumerate(nodes):
        client = await clients.connect(node, f"user{i}")
        epochs.add((client.conn.welcome or {})["epoch"])
    assert len(epochs) == 1 and all(epochs)
