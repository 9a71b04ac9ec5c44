"""Fixtures and helpers for cluster tests: server nodes as subprocesses sharing the real Redis.

Each test gets its own key prefix (``imchat-test-<uuid>:``) and deletes its keys at
teardown. Tests synchronise on frames with bounded waits, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_REDIS_URL, free_port, redis_available

from imchat.client import Connection, ConnectionClosed, ServerError
from imchat.protocol import FrameDecoder, decode_object, encode_message
from imchat.server.redis_store import CLAIM_GRACE, RedisStore

REDIS_URL = TEST_REDIS_URL
#: How long any single reply or event may take before a test fails.
TIMEOUT = 10.0
LISTENING = re.compile(r"listening on (\S+):(\d+)")

Message = dict[str, Any]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not items or redis_available():
        return
    skip = pytest.mark.skip(reason=f"no Redis answers at {REDIS_URL}")
    for item in items:
        if "cluster" in item.path.parts:
            item.add_marker(skip)


class Node:
    """One ``imchat server --redis`` process; its stderr is collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str], data_dir: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.port = 0
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                self._listening.set()

    def wait_listening(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("node did not start:\n" + "".join(self.lines))

    async def wait_log(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Wait until ``text`` has appeared in ``count`` lines of the node's log."""

        def wait() -> bool:
            with self._new_line:
                return self._new_line.wait_for(
                    lambda: sum(text in line for line in self.lines) >= count, timeout
                )

        if not await asyncio.to_thread(wait):
            raise AssertionError(f"{text!r} not logged {count} times:\n" + "".join(self.lines))

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(TIMEOUT)


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "imchat", "server", *args]


class Cluster:
    """Starts nodes sharing one Redis prefix; stops them and deletes the keys at teardown."""

    def __init__(self, base: Path, prefix: str, *, redis_url: str = REDIS_URL) -> None:
        self.base = base
        self.prefix = prefix
        self.redis_url = redis_url
        self.nodes: list[Node] = []

    def start(
        self,
        *,
        node_timeout: float = 15.0,
        extra: tuple[str, ...] = (),
        redis_url: str | None = None,
        port: int = 0,
    ) -> Node:
        """Start a node (``redis_url``: reach Redis another way, e.g. through a proxy)."""
        data_dir = self.base / f"node{len(self.nodes)}"
        proc = subprocess.Popen(
            server_command(
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--redis",
                redis_url or self.redis_url,
                "--redis-prefix",
                self.prefix,
                "--node-timeout",
                str(node_timeout),
                "--rate",
                "0",
                "--addr-rate",
                "0",
                *extra,
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        node = Node(proc, data_dir)
        self.nodes.append(node)
        return node

    def start_many(self, count: int, **kwargs: Any) -> list[Node]:
        nodes = [self.start(**kwargs) for _ in range(count)]
        for node in nodes:
            node.wait_listening()
        return nodes

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        delete_keys(self.prefix, self.redis_url)


def delete_keys(prefix: str, url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def prefix() -> str:
    return f"imchat-test-{uuid.uuid4().hex}:"


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[RedisStore]:
    """A Redis store of its own key prefix, its keys deleted afterwards."""
    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        delete_keys(prefix)


@pytest.fixture
def cluster(tmp_path: Path, prefix: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, prefix)
    try:
        yield cluster
    finally:
        cluster.close()


class PrivateRedis:
    """A Redis of our own on a free port, so a test may kill it and start it again.

    ``extra`` arguments make it a replica (``--replicaof``) or a Sentinel (a config file
    and ``--sentinel``); its log is kept for :meth:`wait_log`.
    """

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._new_line = threading.Condition()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        sentinel = "--sentinel" in self.extra
        args = [*self.extra, "--port", str(self.port), "--bind", "127.0.0.1"]
        if not sentinel:
            args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.lines.clear()
        self.proc = subprocess.Popen(
            ["redis-server", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        # Its own log says when it accepts connections (or the pipe ends if it fails).
        ready = "Sentinel ID is" if sentinel else "Ready to accept connections"
        self.wait_log_sync(ready)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_log_sync(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        def seen() -> bool:
            ended = self.proc is not None and self.proc.poll() is not None
            return ended or sum(text in line for line in self.lines) >= count

        with self._new_line:
            self._new_line.wait_for(seen, timeout)
            if sum(text in line for line in self.lines) < count:
                raise AssertionError(f"redis-server never logged {text!r}:\n" + "".join(self.lines))

    async def wait_log(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        await asyncio.to_thread(self.wait_log_sync, text, count, timeout)

    def command(self, *args: str) -> Any:
        """Run one command on it (CONFIG SET, CLIENT PAUSE, REPLICAOF...)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class BlackHoleProxy:
    """A TCP proxy to Redis that can silence the subscriptions passing through it.

    A silenced connection stays open and accepts what it is sent, but nothing more arrives
    from Redis: what a half-open link or a NAT that forgot the flow looks like to a node.
    Only connections that had sent SUBSCRIBE when :meth:`silence_subscriptions` was called
    are silenced, so the node's commands, and a subscription it makes afterwards, still work.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self._subscribers: list[dict[str, bool]] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def silence_subscriptions(self) -> None:
        for link in self._subscribers:
            link["silenced"] = True

    def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(client_r, client_w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._writers += [client_w, redis_w]
        link = {"silenced": False}

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if b"SUBSCRIBE" in data.upper() and link not in self._subscribers:
                    self._subscribers.append(link)
                if not link["silenced"]:
                    redis_w.write(data)

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if not link["silenced"]:
                    client_w.write(data)

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(upstream(), downstream())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------- clients


class Client:
    """A :class:`Connection` plus helpers to wait for events (bounded, never sleeping)."""

    def __init__(self, conn: Connection, nick: str) -> None:
        self.conn = conn
        self.nick = nick
        #: Every event received so far, in order (those a wait skipped included).
        self.seen: list[Message] = []

    async def request(self, kind: str, **fields: Any) -> Message:
        return await asyncio.wait_for(self.conn.request(kind, **fields), TIMEOUT)

    async def next_event(self, timeout: float = TIMEOUT) -> Message:
        event = await self.conn.next_event(timeout)
        self.seen.append(event)
        return event

    async def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = TIMEOUT
    ) -> Message:
        """The first event (from now on) matching ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{self.nick}: no matching event; saw {self.seen[-10:]}")
            try:
                event = await self.next_event(left)
            except TimeoutError:
                continue
            if predicate(event):
                return event

    async def collect(
        self, predicate: Callable[[Message], bool], count: int, timeout: float = TIMEOUT
    ) -> list[Message]:
        """The next ``count`` events matching ``predicate``, in arrival order."""
        return [await self.wait_for(predicate, timeout) for _ in range(count)]

    def drain_now(self) -> list[Message]:
        """Events already queued (without waiting)."""
        events = []
        while not self.conn.events.empty():
            event = self.conn.events.get_nowait()
            self.seen.append(event)
            events.append(event)
        return events

    async def close(self) -> None:
        await self.conn.close()


class Clients:
    """Like the client library, keeps each guest identity's ``resume`` (rev 2) and sends it
    when the same nick says hello again, on any node; ``fresh=True`` is a stranger."""

    def __init__(self) -> None:
        self.open: list[Client] = []
        self.resumes: dict[str, str] = {}

    async def connect(
        self, node: Node, nick: str, *, token: str | None = None, fresh: bool = False
    ) -> Client:
        conn = await Connection.connect("127.0.0.1", node.port)
        client = Client(conn, nick)
        self.open.append(client)
        resume = None if fresh or token is not None else self.resumes.get(nick.lower())
        welcome = await asyncio.wait_for(conn.hello(nick, token=token, resume=resume), TIMEOUT)
        if isinstance(welcome.get("resume"), str):
            self.resumes[nick.lower()] = welcome["resume"]
        return client

    async def connect_raw(self, node: Node) -> Connection:
        """A connection that has not said hello yet (closed at teardown)."""
        conn = await Connection.connect("127.0.0.1", node.port)
        self.open.append(Client(conn, "?"))
        return conn

    async def admin(self, node: Node) -> Client:
        return await self.connect(node, "admin", token=node.admin_token)

    async def close(self) -> None:
        for client in self.open:
            with contextlib.suppress(Exception):
                client.conn.abort()
        self.open.clear()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    clients = Clients()
    try:
        yield clients
    finally:
        await clients.close()


class RawClient:
    """Frames in arrival order, replies and events alike (for reply-before-event checks)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(16 * 1024 * 1024)
        self._frames: list[Message] = []

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        self.writer.write(encode_message(message))

    async def recv(self, timeout: float = TIMEOUT) -> Message:
        while not self._frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("server closed")
            self._frames.extend(decode_object(p) for p in self.decoder.feed(data))
        return self._frames.pop(0)

    async def recv_until(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Frames up to and including the first that matches."""
        frames = []
        while True:
            frame = await self.recv()
            frames.append(frame)
            if predicate(frame):
                return frames

    def close(self) -> None:
        self.writer.close()


async def connect_retrying(
    clients: Clients, node: Node, nick: str, *, room: str | None = None
) -> Client:
    """Connect (and join ``room``), retrying while the node is between Redis incarnations:
    it answers ``shutting_down`` until it has Redis again (bounded). A hello cut off by the
    loss may leave its guest identity claimed with a resume nobody got: ``nick_taken`` until
    the claim's grace ends, which the bound covers."""
    deadline = asyncio.get_running_loop().time() + CLAIM_GRACE + 2 * TIMEOUT
    while True:
        try:
            client = await clients.connect(node, nick)
            if room is not None:
                await client.request("join", room=room)
            return client
        except (ServerError, ConnectionClosed, OSError, TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)  # a reconnect backoff, as a client would


async def say_through_fault(
    clients: Clients,
    node: Node,
    texts: list[str],
    fault_at: int,
    fault: Callable[[], object],
    room: str = "lobby",
) -> dict[str, int]:
    """Say ``texts`` in order as a careful client would while ``fault`` strikes before text
    ``fault_at``: an answer of ``internal``, ``shutting_down`` or none leaves the outcome
    unknown, so the text is sent again with the same cid (on a new connection) until it is
    acknowledged. Returns each text's acknowledged seq."""
    sender = await connect_retrying(clients, node, "sender", room=room)
    acked: dict[str, int] = {}
    for i, text in enumerate(texts):
        if i == fault_at:
            fault()
        while text not in acked:
            try:
                reply = await sender.request("say", room=room, text=text, cid=text)
                acked[text] = reply["seq"]
            except (ServerError, ConnectionClosed, TimeoutError):
                with contextlib.suppress(Exception):
                    sender.conn.abort()
                sender = await connect_retrying(clients, node, "sender", room=room)
    return acked


async def assert_history_once_and_gapless(
    reader: Client, texts: list[str], acked: dict[str, int], room: str = "lobby"
) -> None:
    """Every acknowledged text is in history once, at its acknowledged seq, seqs 1..n."""
    history = await reader.request("history", room=room, limit=len(texts) + 50)
    stored = [(m["seq"], m["text"]) for m in history["messages"]]
    assert stored == [(acked[t], t) for t in texts]
    assert [seq for seq, _ in stored] == list(range(1, len(texts) + 1))


def is_type(kind: str, **fields: Any) -> Callable[[Message], bool]:
    def predicate(event: Message) -> bool:
        return event.get("type") == kind and all(event.get(k) == v for k, v in fields.items())

    return predicate
