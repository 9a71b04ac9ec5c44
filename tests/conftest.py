"""Shared fixtures: real servers on ephemeral ports, client factories, a server subprocess.

Tests synchronise on frames (replies and events awaited with a timeout), never on sleeps.
The server package is imported inside the fixtures, so the protocol unit tests run without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from imchat.client import Connection
from imchat.protocol import CLIENT_MAX_FRAME, FrameDecoder, encode_frame, encode_message

#: How long any single reply or event may take before a test fails.
TIMEOUT = 5.0
#: Presence events go to every session; most tests are about something else.
PRESENCE = frozenset({"online", "offline"})
LISTENING = re.compile(r"listening on (\S+):(\d+)")
IMCHAT_EXE = Path(sys.executable).parent / "imchat"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_config(**fields): ServerConfig overrides for the `server` fixture"
    )
    config.addinivalue_line(
        "markers", "both_loops: run on uvloop (the server's default loop) as well as asyncio's"
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test runs on asyncio's own loop; one marked ``both_loops`` on uvloop too (where
    it is installed), for code that depends on how the loop calls transports and protocols."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if item.get_closest_marker("both_loops") is not None:
        with contextlib.suppress(ImportError):
            import uvloop

            factories["uvloop"] = uvloop.new_event_loop
    return factories


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A hung test must fail on its own instead of stalling the whole run.
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(30))


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clients keep guest ``resume`` secrets here, never in the user's own state dir."""
    state = tmp_path / "client-state"
    monkeypatch.setenv("IMCHAT_STATE_DIR", str(state))
    return state


# --------------------------------------------------------------------------- servers


#: ``IMCHAT_TEST_BACKEND=redis`` runs every in-process server on the Redis backend (one key
#: prefix per test, deleted afterwards), so the contract tests check it too.
TEST_REDIS_URL = os.environ.get("IMCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_BACKEND_URL = TEST_REDIS_URL if os.environ.get("IMCHAT_TEST_BACKEND") == "redis" else None


def redis_available(url: str = TEST_REDIS_URL) -> bool:
    """Whether a Redis answers there (tests that need one are skipped where none does)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError):
        return False
    return True


class Servers:
    """Starts in-process servers on port 0 and stops whichever are still running at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.data_dir.mkdir()
        self.running: list[Any] = []
        self.redis_prefix = f"imchat-test-{uuid.uuid4().hex}:" if REDIS_BACKEND_URL else None

    async def start(self, data_dir: Path | None = None, **overrides: Any) -> Any:
        from imchat.server.app import ChatServer
        from imchat.server.config import ServerConfig

        if self.redis_prefix is not None:
            overrides = {
                "redis_url": REDIS_BACKEND_URL,
                "redis_prefix": self.redis_prefix,
                **overrides,
            }
        # Every test client comes from 127.0.0.1: the per-address budget (tested on its own in
        # test_address_limits.py) would make tests of anything else depend on their neighbours.
        overrides.setdefault("addr_rate", 0)
        overrides.setdefault("addr_rooms_per_minute", 0)  # the same for rooms they create
        overrides.setdefault("addr_guests_per_minute", 0)  # ... and guests they begin
        overrides.setdefault("addr_read_rate", 0)  # ... and their reads
        config = ServerConfig(**{"port": 0, "data_dir": data_dir or self.data_dir, **overrides})
        server = ChatServer(config)
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: Any) -> None:
        self.running.remove(server)
        await server.stop()

    @property
    def current(self) -> Any:
        assert self.running, "no server running"
        return self.running[-1]

    async def close(self) -> None:
        for server in reversed(self.running):
            await server.stop()
        self.running.clear()
        if self.redis_prefix is not None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(REDIS_BACKEND_URL)
            keys = [k async for k in client.scan_iter(match=f"{self.redis_prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    servers = Servers(tmp_path)
    try:
        yield servers
    finally:
        await servers.close()


@pytest.fixture
async def server(request: pytest.FixtureRequest, servers: Servers) -> Any:
    """An in-process server on 127.0.0.1:0; ``@pytest.mark.server_config(...)`` tunes it."""
    marker = request.node.get_closest_marker("server_config")
    return await servers.start(**(marker.kwargs if marker else {}))


@pytest.fixture
def data_dir(servers: Servers) -> Path:
    return servers.data_dir


def admin_token(data_dir: Path) -> str:
    return (data_dir / "admin.token").read_text().strip()


# --------------------------------------------------------------------------- clients


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: the CA, and a server certificate for 127.0.0.1 and localhost."""
    base = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with paths["cert"].open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return paths


class RawClient:
    """A bare socket speaking frames: every frame in arrival order, replies and events alike.

    :class:`Connection` routes replies and events apart; tests of ordering, ids and malformed
    input need the stream as it came.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resumes: dict[str, str] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(16 * 1024 * 1024)
        self.eof = False
        #: Guest resume secrets shared with the test's other clients (see :class:`Clients`).
        self.resumes = resumes if resumes is not None else {}

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode_message(message))

    def send_json(self, text: str | bytes) -> None:
        """One frame holding exactly these bytes (for hand-written JSON)."""
        self.writer.write(encode_frame(text.encode() if isinstance(text, str) else text))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of any kind; ``EOFError`` once the server closed."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.decoder.next_frame()
            if payload is not None:
                message = json.loads(payload.decode("utf-8"))
                assert isinstance(message, dict), message
                return message
            if self.eof:
                assert self.decoder.buffered == 0, "server closed in the middle of a frame"
                raise EOFError
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame within timeout")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            else:
                self.decoder.receive_data(data)

    async def recv_skip(
        self, skip: frozenset[str] = PRESENCE, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The next frame whose type is not in ``skip``."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(deadline - time.monotonic(), 0.001))
            if frame.get("type") not in skip:
                return frame

    async def recv_until_eof(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every remaining frame; fails unless the server closes within ``timeout``."""
        deadline = time.monotonic() + timeout
        frames: list[dict[str, Any]] = []
        while True:
            try:
                frames.append(await self.recv(max(deadline - time.monotonic(), 0.001)))
            except EOFError:
                return frames

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` (which should carry an id) and return the frame that answers it."""
        self.send(message)
        while True:
            frame = await self.recv()
            if "id" in frame and frame["id"] == message.get("id"):
                return frame

    async def hello(self, nick: str, *, fresh: bool = False, **fields: Any) -> dict[str, Any]:
        """``hello``, continuing the guest identity this test last had under ``nick`` (as
        the client library does) unless ``fresh`` or credentials are given."""
        key = nick.lower()
        if not fresh and key in self.resumes and not fields.keys() & CREDENTIALS:
            fields["resume"] = self.resumes[key]
        welcome = await self.request(
            {"type": "hello", "proto": 1, "nick": nick, **fields, "id": "hello"}
        )
        assert welcome["type"] == "welcome", welcome
        remember_resume(self.resumes, nick, welcome)
        return welcome

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


CREDENTIALS = frozenset({"resume", "password", "token"})


def remember_resume(resumes: dict[str, str], nick: str, welcome: dict[str, Any]) -> None:
    resume = welcome.get("resume")
    if isinstance(resume, str):
        resumes[nick.lower()] = resume
    else:
        resumes.pop(nick.lower(), None)


class Clients:
    """Opens clients against ``servers.current`` (or a given port) and closes them all.

    Like the client library, it keeps each guest identity's ``resume`` (rev 2) and sends it
    when the same nick says ``hello`` again; ``fresh=True`` is a stranger without it.
    """

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.opened: list[Connection | RawClient] = []
        self.resumes: dict[str, str] = {}

    def _port(self, port: int | None) -> int:
        return port if port is not None else self.servers.current.port

    async def __call__(
        self,
        nick: str | None = None,
        *,
        port: int | None = None,
        fresh: bool = False,
        source: str | None = None,
        **hello: Any,
    ) -> Connection:
        """A connection, after ``hello`` as ``nick`` unless ``nick`` is None; ``source``: the
        local address to connect from (another loopback address is another client address)."""
        if source is None:
            conn = await Connection.connect("127.0.0.1", self._port(port), timeout=TIMEOUT)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    self._port(port),
                    local_addr=(source, 0),
                    limit=CLIENT_MAX_FRAME,
                ),
                TIMEOUT,
            )
            conn = Connection(reader, writer)
        self.opened.append(conn)
        if nick is not None:
            key = nick.lower()
            if not fresh and key in self.resumes and not hello.keys() & CREDENTIALS:
                hello["resume"] = self.resumes[key]
            welcome = await asyncio.wait_for(conn.hello(nick, **hello), TIMEOUT)
            remember_resume(self.resumes, nick, welcome)
        return conn

    async def raw(self, *, port: int | None = None) -> RawClient:
        client = await RawClient.open(self._port(port))
        client.resumes = self.resumes
        self.opened.append(client)
        return client

    async def admin(self, *, port: int | None = None) -> Connection:
        return await self("admin", port=port, token=admin_token(self.servers.data_dir))

    async def close(self) -> None:
        for client in reversed(self.opened):
            if isinstance(client, Connection):
                client.abort()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wait_closed(), TIMEOUT)
            else:
                await client.close()


@pytest.fixture
async def connect(servers: Servers) -> AsyncIterator[Clients]:
    """``await connect("alice")`` gives a Connection after hello; closed at teardown."""
    clients = Clients(servers)
    try:
        yield clients
    finally:
        await clients.close()


# --------------------------------------------------------------------------- event helpers


async def next_event(
    conn: Connection,
    type_: str | None = None,
    *,
    skip: frozenset[str] = PRESENCE,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """The next event whose type is not in ``skip`` (unless it is ``type_``), checked."""
    deadline = time.monotonic() + timeout
    while True:
        event = await conn.next_event(max(deadline - time.monotonic(), 0.001))
        if event.get("type") in skip and event.get("type") != type_:
            continue
        if type_ is not None:
            assert event.get("type") == type_, event
        return event


async def pending_events(
    conn: Connection, *, skip: frozenset[str] = PRESENCE
) -> list[dict[str, Any]]:
    """Every event this session was sent before the server answered a ping from it.

    Exact for the events of this session's own requests (they follow their replies). Events
    that other users' requests cause may still be on their way (a DM is handed over after its
    commit): wait for those with :func:`next_event`, and prove that something was *not* sent
    with a later marker message instead.
    """
    await asyncio.wait_for(conn.request("ping"), TIMEOUT)
    events = []
    while not conn.events.empty():
        event = conn.events.get_nowait()
        if event.get("type") not in skip:
            events.append(event)
    return events


async def join(conn: Connection, room: str) -> dict[str, Any]:
    """Join ``room`` and consume the session's own ``joined`` event."""
    ok = await asyncio.wait_for(conn.request("join", room=room), TIMEOUT)
    event = await next_event(conn, "joined")
    assert event["room"] == ok["room"], event
    assert event["nick"] == (conn.welcome or {}).get("nick"), event
    return ok


def assert_ts(ts: Any) -> None:
    """A server time: Unix seconds as a JSON number, rounded to milliseconds, and recent."""
    assert isinstance(ts, int | float) and not isinstance(ts, bool), ts
    assert abs(ts - time.time()) < 60, ts
    assert round(ts * 1000) == pytest.approx(ts * 1000, abs=1e-6), ts


def free_port() -> int:
    """A loopback port nothing listens on, for a subprocess to bind later.

    It comes from below the kernel's ephemeral range where it can: a port that ``bind(0)``
    hands out is one the kernel also picks for outgoing connections, so another test's
    client could take it before the subprocess binds it (a Redis cluster bus once failed
    that way in CI).
    """
    low = ephemeral_ports()[0]
    candidates = random.sample(range(10_000, low), k=50) if low > 11_000 else []
    for port in [*candidates, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise AssertionError("no free loopback port")


def ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 49152, 65535  # the IANA range, which BSDs and macOS use
    return int(low), int(high)


async def stalled(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections to ``port`` that never send a byte (nor start TLS)."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        socks.append(sock)
    return socks


async def closed_by_server(sock: socket.socket, timeout: float = TIMEOUT) -> bool:
    """True if the server closes this (silent) connection within ``timeout``."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


@contextlib.asynccontextmanager
async def embedded_alice(data_dir: Path) -> AsyncIterator[tuple[Any, Connection]]:
    """An embedded (SQLite) server without rate limits and alice in #lobby on it, whatever
    ``IMCHAT_TEST_BACKEND`` says: for tests of how that server batches a burst."""
    from imchat.server.app import ChatServer
    from imchat.server.config import ServerConfig

    server = ChatServer(ServerConfig(port=0, data_dir=data_dir, rate=0, addr_rate=0))
    await server.start()
    try:
        conn = await Connection.connect("127.0.0.1", server.port)
        await conn.hello("alice")
        await conn.request("join", room="lobby")
        yield server, conn
        await conn.close()
    finally:
        await server.stop()


# --------------------------------------------------------------------------- subprocesses


def imchat_command() -> list[str]:
    if IMCHAT_EXE.exists():
        return [str(IMCHAT_EXE)]
    return [sys.executable, "-m", "imchat"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMCHAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    if "IMCHAT_STATE_DIR" in os.environ:  # the test's own, never the user's resume secrets
        env["IMCHAT_STATE_DIR"] = os.environ["IMCHAT_STATE_DIR"]
    # Every test client comes from 127.0.0.1: no per-address message budget unless asked for.
    env["IMCHAT_ADDR_RATE"] = "0"
    env.update(extra)
    return env


class ServerProcess:
    """``imchat server`` as a child process; its stderr is collected by a thread."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        flags: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.args = args
        self.flags = flags
        self.env = env
        self.lines: list[str] = []
        self.port = 0
        self.host = ""
        self._listening = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> int:
        flags = ["--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [*imchat_command(), "server", *(flags if self.flags else []), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env or subprocess_env(),
        )
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        if not self._listening.wait(timeout):
            self.kill(signal.SIGKILL)
            raise AssertionError(f"server never said 'listening on': {self.output}")
        assert self.port, f"no port in the listening line: {self.output}"
        return self.port

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self._listening.is_set():
                self.host, self.port = match.group(1), int(match.group(2))
                self._listening.set()
        self._listening.set()  # the process ended: stop waiting

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    """``start(data_dir, *extra_args)`` runs ``imchat server`` and waits for ``listening on``."""
    started: list[ServerProcess] = []

    def start(
        data_dir: Path | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        flags: bool = True,
    ) -> ServerProcess:
        directory = data_dir or tmp_path / "proc-data"
        directory.mkdir(exist_ok=True)
        proc = ServerProcess(directory, *args, env=env, flags=flags)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.cleanup()
