"""TLS with real certificates (trustme): verified by default, a private CA by ``--ca``."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from secfixtures import raw_fixture, start_server_fixture  # noqa: F401
from secutil import TIMEOUT, Raw, StartServer

from imchat.client import Connection
from imchat.client.session import ChatSession, SessionEvent, State, StateChanged
from imchat.client.tls import client_context


async def test_client_with_the_ca_connects(start_server: StartServer, pki: dict[str, Path]) -> None:
    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"])
    for host in ("127.0.0.1", "localhost"):
        conn = await Connection.connect(host, server.port, ssl=client_context(pki["ca"]))
        welcome = await conn.hello("alice" if host[0] == "1" else "bob")
        assert welcome["type"] == "welcome"
        assert conn._writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await conn.close()


async def test_client_without_the_ca_refuses_the_server(
    start_server: StartServer, pki: dict[str, Path]
) -> None:
    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await Connection.connect("127.0.0.1", server.port, ssl=client_context(None))


async def test_certificate_for_another_host_is_refused(
    start_server: StartServer, ca: trustme.CA, pki: dict[str, Path], tmp_path: Path
) -> None:
    other = ca.issue_cert("chat.example.org")
    other.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "other.pem"))
    server = await start_server(tls_cert=tmp_path / "other.pem", tls_key=tmp_path / "other.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        await Connection.connect("127.0.0.1", server.port, ssl=client_context(pki["ca"]))


async def test_plain_client_gets_only_a_bad_frame_from_a_tls_server(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], pki: dict[str, Path]
) -> None:
    """Nothing of the server's but the one frame that says to use TLS
    (tests/security/test_plaintext_to_tls.py); no session begins."""
    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"])
    conn = await raw(server.port)
    conn.send({"type": "hello", "proto": 1, "nick": "alice"})
    (frame,) = await conn.until_closed()
    assert frame["type"] == "error" and frame["code"] == "bad_frame" and "id" not in frame
    # The server closed it, so it forgets it: every session is gone.
    assert server.hub is not None
    await asyncio.wait_for(server.hub.all_closed(), TIMEOUT)


async def test_tls_handshake_has_the_hello_deadline(
    start_server: StartServer, raw: Callable[..., Awaitable[Raw]], pki: dict[str, Path]
) -> None:
    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"], hello_timeout=0.3)
    conn = await raw(server.port)  # TCP only: never starts the handshake
    assert await conn.until_closed(timeout=3) == []


# -- the command line: a server process (uvloop) and imchat send ------------------------------


def _imchat(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imchat", *args],
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture
def tls_server_process(pki: dict[str, Path], tmp_path: Path) -> Iterator[int]:
    proc = _imchat(
        "server",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            match = re.search(r"listening on \S+:(\d+) \(TLS\)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "the server did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


SEND = [
    sys.executable,
    "-m",
    "imchat",
    "send",
    "hello",
    "--room",
    "lobby",
    "--create",
    "--nick",
    "bot",
]


def _send(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEND, "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_imchat_send_over_tls(tls_server_process: int, pki: dict[str, Path]) -> None:
    result = _send(tls_server_process, "--tls", "--ca", str(pki["ca"]))
    assert result.returncode == 0, result.stderr
    result = _send(tls_server_process, "--ca", str(pki["ca"]))  # --ca implies --tls
    assert result.returncode == 0, result.stderr


def test_imchat_send_refuses_an_unverified_server(tls_server_process: int) -> None:
    result = _send(tls_server_process, "--tls")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not trusted" in lines[0] and "--ca" in lines[0], lines[0]


def test_imchat_send_without_tls_suggests_it(tls_server_process: int) -> None:
    result = _send(tls_server_process)
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "--tls" in result.stderr
    # The server's own word (tests/security/test_plaintext_to_tls.py), not a guess.
    assert "bad_frame: plain connection to a TLS port; connect with TLS" in result.stderr


def test_imchat_send_with_tls_to_a_plain_port_says_so(
    server_process: Any, pki: dict[str, Path]
) -> None:
    """The mirror of the above: ``--tls`` (or ``--ca``) against a plain port used to end in
    OpenSSL's bare ``WRONG_VERSION_NUMBER``."""
    proc = server_process()
    result = _send(proc.port, "--ca", str(pki["ca"]))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "does not answer in TLS" in lines[0] and "without --tls" in lines[0], lines[0]


def test_imchat_send_reports_a_bad_ca_file(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    result = _send(1, "--ca", str(tmp_path / "junk.pem"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_reconnecting_session_speaks_tls(
    start_server: StartServer, pki: dict[str, Path]
) -> None:
    """The TUI's session (``imchat join --tls/--ca``) connects, joins and chats over TLS."""
    from imchat.client.session import ChatSession, State, StateChanged

    server = await start_server(tls_cert=pki["cert"], tls_key=pki["key"])
    session = ChatSession(
        "alice", "127.0.0.1", server.port, ssl=client_context(pki["ca"]), rooms=["lobby"]
    )
    connected = asyncio.Event()
    session.add_listener(
        lambda event: (
            connected.set()
            if isinstance(event, StateChanged) and event.state is State.CONNECTED
            else None
        )
    )
    task = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        bob = await Connection.connect("127.0.0.1", server.port, ssl=client_context(pki["ca"]))
        await bob.hello("bob")
        joined = await bob.request("join", room="lobby")
        assert "alice" in joined["members"]
        await bob.close()
    finally:
        await session.close()
        await asyncio.gather(task, return_exceptions=True)


def _server_start_error(tmp_path: Path, cert: Path, key: Path) -> str:
    """What ``imchat server`` says (and that it exits 1) when its TLS files do not load."""
    proc = subprocess.run(
        [sys.executable, "-m", "imchat", "server", "--port", "0", "--host", "127.0.0.1",
         "--data-dir", str(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(key)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_a_missing_tls_file_is_named(tmp_path: Path, pki: dict[str, Path], missing: str) -> None:
    files = {"cert": pki["cert"], "key": pki["key"], missing: tmp_path / "nowhere.pem"}
    error = _server_start_error(tmp_path, files["cert"], files["key"])
    assert "nowhere.pem" in error
    assert ("certificate" if missing == "cert" else "key") in error


def test_a_key_of_another_certificate_is_said_so(
    tmp_path: Path, ca: trustme.CA, pki: dict[str, Path]
) -> None:
    other = tmp_path / "other-key.pem"
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    error = _server_start_error(tmp_path, pki["cert"], other)
    assert "does not match" in error and "other-key.pem" in error


def test_files_that_are_not_pem_are_said_so(tmp_path: Path, pki: dict[str, Path]) -> None:
    error = _server_start_error(tmp_path, pki["key"], pki["cert"])  # swapped
    assert "PEM" in error and "cert.pem" in error


async def test_a_session_without_tls_against_a_tls_port_stops_and_says_why(
    tls_server_process: int,
) -> None:
    """``imchat join`` without ``--tls`` against a TLS port used to reconnect forever, each
    time refused ``bad_frame``: no reconnect can fix the framing, so it stops at once with
    the server's word (the TUI then shows it, as for a refused login)."""
    session = ChatSession(
        "carol", connector=lambda: Connection.connect("127.0.0.1", tls_server_process)
    )
    states: list[tuple[State, str | None]] = []

    def on_event(event: SessionEvent) -> None:
        if isinstance(event, StateChanged):
            states.append((event.state, event.reason))

    session.add_listener(on_event)
    await asyncio.wait_for(session.run(), 10)
    last_state, reason = states[-1]
    assert last_state is State.OFFLINE
    assert reason is not None and "plain connection to a TLS port" in reason
    assert not any(state is State.RECONNECTING for state, _ in states)
