"""The IRC listener at its edges: TLS, registration deadline, slow consumers, and two cluster
nodes on one Redis (an IRC user on one, a native user on the other)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import TEST_REDIS_URL, RawClient, ServerProcess, redis_available, subprocess_env
from irc_client import IRC_AT, IrcClient, sasl_plain

REDIS_URL = TEST_REDIS_URL


def irc_ports(proc: ServerProcess) -> list[int]:
    return [int(m.group(2)) for m in IRC_AT.finditer(proc.output)]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def run(*args: str, name: str = "d") -> ServerProcess:
        data = tmp_path / name
        data.mkdir()
        proc = ServerProcess(data, *args, env=subprocess_env())
        started.append(proc)
        proc.start()
        return proc

    yield run
    for proc in started:
        proc.cleanup()


async def test_irc_over_tls(start: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    proc = start(
        "--irc-port", "0", "--irc-tls-port", "0",
        "--tls-cert", str(cert_path), "--tls-key", str(key_path),
    )  # fmt: skip
    plain_port, tls_port = irc_ports(proc)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=context)
    client = IrcClient(reader, writer)
    await client.register("secure")
    plain = await IrcClient.open(plain_port)
    await plain.register("plain")
    await client.join("#sec")
    await plain.join("#sec")
    plain.send("PRIVMSG #sec :over plain, read over TLS")
    got = await client.expect("PRIVMSG")
    assert got.params[-1] == "over plain, read over TLS"
    await client.close()
    await plain.close()


async def test_registration_deadline(start: Any) -> None:
    proc = start("--irc-port", "0", "--hello-timeout", "0.5")
    client = await IrcClient.open(irc_ports(proc)[0])
    client.send("NICK slow")  # never sends USER
    rest = await client.closed()
    assert rest[-1].command == "ERROR" and "idle_timeout" in rest[-1].params[-1]


async def test_slow_consumer_is_cut_off(start: Any) -> None:
    proc = start("--irc-port", "0", "--max-buffer", "65536", "--rate", "0")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    sock.connect(("127.0.0.1", irc_ports(proc)[0]))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    stuck = IrcClient(reader, writer)
    await stuck.register("stuck")
    await stuck.join("#flood")
    talker = await RawClient.open(proc.port)
    await talker.hello("talker")
    await talker.request({"type": "join", "room": "flood", "id": "join"})
    # The IRC client reads nothing more; the talker goes on until the server drops it.
    # Once cut off, its connection is aborted within CLOSE_GRACE (2 s) and it leaves the room.
    # (Each chunk ends with a ping, not a `users` poll: that is a read, and a fast machine
    # spent the session's read budget within the grace.)
    gone = False
    deadline = time.monotonic() + 20
    chunk = 0
    while not gone and time.monotonic() < deadline:
        chunk += 1
        for i in range(20):
            talker.send({"type": "say", "room": "flood", "text": "z" * 3000, "id": i})
        talker.send({"type": "ping", "id": f"p{chunk}"})
        while (frame := await talker.recv()).get("id") != f"p{chunk}":
            gone = gone or (frame["type"] == "parted" and frame["nick"] == "stuck")
    assert gone, proc.output[-3000:]
    assert "(stuck): slow_consumer" in proc.output
    await stuck.closed(timeout=20)  # what was in flight, then the end of the connection
    await talker.close()


@pytest.mark.skipif(not redis_available(), reason="no Redis on 127.0.0.1:6379")
async def test_cluster_carries_irc_users(start: Any) -> None:
    prefix = f"imchat-test-{uuid.uuid4().hex}:"
    flags = ("--redis", REDIS_URL, "--redis-prefix", prefix)
    try:
        a = start("--irc-port", "0", *flags, name="a")
        b = start(*flags, name="b")
        irc = await IrcClient.open(irc_ports(a)[0])
        await irc.register("ircnode")
        await irc.join("#both")
        native = await RawClient.open(b.port)
        await native.hello("nativenode")
        await native.request({"type": "join", "room": "both", "id": 1})
        assert (await irc.expect("JOIN")).line.source.startswith("nativenode!")
        native.send({"type": "say", "room": "both", "text": "from node b", "id": 2})
        assert (await irc.expect("PRIVMSG")).params == ["#both", "from node b"]
        irc.send("PRIVMSG #both :from node a")
        while True:
            frame = await native.recv()
            if frame.get("type") == "msg" and frame.get("from") == "ircnode":
                break
        assert frame["text"] == "from node a"
        irc.send("PRIVMSG nativenode :a dm across nodes")
        while True:
            frame = await native.recv()
            if frame.get("type") == "dm":
                break
        assert (frame["from"], frame["text"]) == ("ircnode", "a dm across nodes")
        await irc.close()
        await native.close()
    finally:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_server_pings_a_silent_client_and_keeps_it(start: Any) -> None:
    proc = start("--irc-port", "0", "--idle-timeout", "1.5")
    client = await IrcClient.open(irc_ports(proc)[0])
    await client.register("quiet")
    # A PING every third of the idle timeout; the client's PONG (sent by IrcClient.recv)
    # keeps it: three PINGs in a row span more than the timeout itself.
    for _ in range(3):
        ping = await client.expect("PING")
        assert ping.params == ["imchat"]
    client.send("PING :alive")
    assert (await client.expect("PONG")).params[-1] == "alive"
    await client.close()


async def test_sasl_without_cap_end_meets_the_registration_deadline(start: Any) -> None:
    proc = start("--irc-port", "0", "--hello-timeout", "0.5")
    token = (proc.data_dir / "admin.token").read_text().strip()
    client = await IrcClient.open(irc_ports(proc)[0])
    client.send("CAP LS 302", "NICK x", "USER u 0 * :u", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    await client.expect("AUTHENTICATE")
    client.send("AUTHENTICATE " + sasl_plain("admin", "token:" + token))
    await client.expect("903")  # logged in, but never sends CAP END
    rest = await client.closed()
    assert rest[-1].command == "ERROR" and "registration not completed" in rest[-1].params[-1]


@pytest.mark.server_config(irc_port=0, socket_send_buffer=40960)
async def test_the_plain_irc_port_is_a_listener_like_every_other_port(server: Any) -> None:
    """The plain IRC port was a bare ``create_server``: ``--socket-send-buffer`` (the bound
    on what the kernel holds for a slow reader) and counting the address at accept did not
    apply there."""
    client = await IrcClient.open(server.irc_ports[0])
    await client.register("sock")
    (session,) = [s for s in server.hub.registry.sessions if s.nick == "sock"]
    sock = session.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 40960  # Linux: doubled
    assert session.admitted  # counted when accepted, before it could send a byte
    await client.close()
