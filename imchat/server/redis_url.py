"""Where a cluster's Redis is: a plain ``redis://`` URL, Sentinels, or a Redis Cluster.

``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]`` names the Sentinels to
ask and the monitored service; every new connection asks them for the current primary, so
the nodes follow a failover without being restarted. ``redis+cluster://[:password@]host:port
[,host:port…]`` names some nodes of a Redis Cluster (seeds); every new connection asks them
which primary serves imchat's slot (:mod:`imchat.server.redis_shard`). Plain URLs
(``redis://``, ``rediss://``, ``unix://``) go to redis-py as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .store import StoreUnavailable

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379


class BadRedisUrl(StoreUnavailable):
    """The URL cannot name a Redis; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    seeds: tuple[tuple[str, int], ...]
    password: str | None = None
    tls: bool = False


def parse_cluster_url(url: str) -> ClusterTarget | None:
    """The Redis Cluster seeds a URL names, or None for any other URL."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        return None
    authority, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise BadRedisUrl(f"a Redis Cluster has only database 0: {url}")
    password = None
    if "@" in authority:
        credentials, authority = authority.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2] or credentials) or None
    seeds = tuple(
        _host_port(part, url, DEFAULT_REDIS_PORT) for part in authority.split(",") if part
    )
    if not seeds:
        raise BadRedisUrl(f"no Redis Cluster node in {url}")
    return ClusterTarget(seeds, password, scheme.startswith("rediss"))


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinel target a URL names, or None for a plain Redis URL."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        return None
    # urlsplit cannot take several hosts: split the authority by hand.
    authority, _, path = rest.partition("/")
    password = None
    if "@" in authority:
        credentials, authority = authority.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2] or credentials) or None
    sentinels = tuple(_host_port(part, url) for part in authority.split(",") if part)
    if not sentinels:
        raise BadRedisUrl(f"no Sentinel address in {url}")
    parts = [p for p in urlsplit("x://h/" + path).path.split("/") if p]
    if not parts:
        raise BadRedisUrl(f"no service name in {url} (…/service[/db])")
    try:
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise BadRedisUrl(f"database in {url} is not a number") from None
    return SentinelTarget(sentinels, unquote(parts[0]), db, password, scheme.startswith("rediss"))


def _host_port(part: str, url: str, default: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:26379
        host, _, port = part[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    try:
        return host, int(port) if port else default
    except ValueError:
        raise BadRedisUrl(f"bad port in {part!r} of {url}") from None
