"""A primary, its replicas and three Sentinels of the test's own, and a replication link
that can be cut without anyone noticing (for ``test_cluster_sentinel.py`` and
``test_cluster_lagging_failover.py``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster_support import PrivateRedis

SERVICE = "imchat-primary"


class ReplicationLink:
    """A TCP proxy a replica replicates through; :meth:`black_hole` makes it lag for real.

    Once black-holed, what the primary sends is read and dropped: the primary counts it as
    sent (its offset grows, its writes are acknowledged) while the replica, its link still
    up, never gets it. What the replica sends (its acknowledgements) still passes. Threads,
    not asyncio: the fixtures block while the replica syncs through it.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def black_hole(self) -> None:
        self._cut.set()

    def _accept(self) -> None:
        while True:
            try:
                replica, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                primary = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                replica.close()
                continue
            self._sockets += [replica, primary]
            threading.Thread(target=self._pump, args=(replica, primary, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(primary, replica, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_primary: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not (from_primary and self._cut.is_set()):
                    sink.sendall(data)
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for each in self._sockets:
            with contextlib.suppress(OSError):
                each.close()


class SentinelSet:
    """A primary, ``replicas`` replicas and three Sentinels (quorum 2, a primary is down
    after 1 s). ``through_link``: the replicas replicate through a :class:`ReplicationLink`.

    ``failover_timeout_ms`` is also how long a Sentinel leaves a replica that names another
    primary (the link's address) alone before it "fixes" its configuration.
    """

    def __init__(
        self,
        base: Path,
        *,
        replicas: int = 2,
        failover_timeout_ms: int = 4000,
        through_link: bool = False,
    ) -> None:
        self.primary = PrivateRedis(base / "primary")
        self.replicas = [PrivateRedis(base / f"replica{i}") for i in range(replicas)]
        self.sentinels = [PrivateRedis(base / f"sentinel{i}") for i in range(3)]
        self.failover_timeout_ms = failover_timeout_ms
        self.through_link = through_link
        self.link: ReplicationLink | None = None

    def start(self) -> None:
        self.primary.start()
        upstream = self.primary.port
        if self.through_link:
            self.link = ReplicationLink(self.primary.port)
            upstream = self.link.port
        for replica in self.replicas:
            replica.extra = ("--replicaof", "127.0.0.1", str(upstream))
            replica.start()
            replica.wait_log_sync("MASTER <-> REPLICA sync: Finished with success")
        for sentinel in self.sentinels:
            config = sentinel.workdir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            )
            sentinel.extra = (str(config), "--sentinel")
            sentinel.start()
        for sentinel in self.sentinels:
            # It knows the replicas and both other Sentinels: a failover can be agreed.
            sentinel.wait_log_sync("+slave ", count=len(self.replicas))
            sentinel.wait_log_sync("+sentinel ", count=2)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def stop(self) -> None:
        for server in (*self.sentinels, *self.replicas, self.primary):
            server.kill()
        if self.link is not None:
            self.link.close()


@contextlib.contextmanager
def running_sentinels(
    base: Path, *, replicas: int = 2, failover_timeout_ms: int = 4000, through_link: bool = False
) -> Iterator[SentinelSet]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    servers = SentinelSet(
        base,
        replicas=replicas,
        failover_timeout_ms=failover_timeout_ms,
        through_link=through_link,
    )
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
