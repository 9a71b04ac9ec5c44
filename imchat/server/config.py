"""Server settings: one dataclass, filled from CLI flags or ``IMCHAT_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from imchat.protocol import DEFAULT_MAX_FRAME, DEFAULT_MAX_TEXT
from imchat.protocol.messages import DEFAULT_MAX_TOPIC

DEFAULT_PORT = 7667


def default_data_dir() -> Path:
    """``./imchat-data`` if it exists (a checkout or a container volume), else the user data dir."""
    local = Path("imchat-data")
    if local.is_dir():
        return local
    return Path(platformdirs.user_data_dir("imchat", appauthor=False))


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    max_frame: int = DEFAULT_MAX_FRAME
    max_text: int = DEFAULT_MAX_TEXT
    #: Longest room topic, in characters (announced in ``welcome``).
    max_topic: int = DEFAULT_MAX_TOPIC
    #: Rooms a user may be a member of at once; a join beyond is ``limit_reached``.
    max_rooms: int = 256
    #: Rooms a guest identity may create (by joining a new name) per minute after a burst of
    #: ``guest_rooms_burst``; beyond it ``rate_limited``. 0: no limit. Accounts have none.
    guest_rooms_per_minute: float = 1.0
    guest_rooms_burst: int = 20
    #: The same for all guests of one address (IPv4, or IPv6 /64) together, and across the
    #: nodes of a cluster on the Redis backend. 0: no limit.
    addr_rooms_per_minute: float = 2.0
    addr_rooms_burst: int = 40
    #: Guest identities one address (IPv4, or IPv6 /64) may begin per minute after a burst of
    #: ``addr_guests_burst`` (a hello taking a free guest nick); beyond it the hello is
    #: ``rate_limited``. A guest resuming its identity spends nothing. 0: no limit.
    addr_guests_per_minute: float = 300.0
    addr_guests_burst: int = 300
    #: Guests create rooms only while fewer than this many exist (``limit_reached``);
    #: accounts are not bound. 0: no cap.
    guest_room_cap: int = 10000
    #: Seconds without a frame from the client before its session is closed.
    idle_timeout: float = 90.0
    #: Bytes a session may owe its client before it is cut off as ``slow_consumer``.
    max_buffer: int = 1024 * 1024
    #: Unsent output all sessions together may hold; over it the largest owers are cut with
    #: ``slow_consumer``. 0: no bound.
    max_output_total: int = 256 * 1024 * 1024
    #: Sustained say/dm/announce/topic requests per second per session; 0 disables.
    rate: float = 20.0
    #: How many such requests a session may send at once before ``rate`` applies.
    burst: int = 40
    #: The same budget per client address (IPv4, or IPv6 /64) across all its sessions, and
    #: across all nodes of a cluster on the Redis backend; 0 disables.
    addr_rate: float = 40.0
    addr_burst: int = 80
    #: Reads (``history``, ``users``, ``markers``; IRC ``WHOIS``) and read-marker moves
    #: (``mark``) per second per session, after a burst of ``read_burst``; 0 disables. A
    #: budget of their own, and a large burst: a client sends one or two per conversation at
    #: every (re)connect.
    read_rate: float = 20.0
    read_burst: int = 500
    #: The same reads spend a shared budget too: all guests of one address (IPv4, or IPv6
    #: /64) together, an account's sessions together (wherever they come from), per node
    #: (also on the Redis backend: no round trip per read); 0 disables. More sessions (or
    #: guest nicks) no longer multiply the per-session budget; its burst is four sessions'
    #: for a NAT.
    addr_read_rate: float = 100.0
    addr_read_burst: int = 2000
    motd: str | None = None
    log_level: str = "info"
    #: Refuse guests: every nick needs an account (``auth_failed``).
    require_account: bool = False
    #: Open connections per client address; more are refused with ``rate_limited``. 0: no limit.
    max_connections_per_ip: int = 128
    #: Seconds a connection may take to complete ``hello`` (and its TLS handshake). 0: no limit.
    hello_timeout: float = 10.0
    #: Failed logins per address within ``auth_window`` seconds before further logins from
    #: that address are answered ``rate_limited`` unchecked. 0: no limit.
    auth_failures: int = 5
    auth_window: float = 60.0
    #: Password checks per address within ``auth_window``, correct ones included, before
    #: further logins from that address are answered ``rate_limited``. 0: no limit.
    auth_logins: int = 30
    #: Seconds between checks that logged-in sessions' tokens and passwords are still valid.
    auth_recheck: float = 10.0
    #: PEM certificate chain and private key: serve TLS instead of plain TCP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: IRC listeners (``imchat.server.irc``) beside the native one; None: off. The TLS one
    #: uses ``tls_cert``/``tls_key``.
    irc_port: int | None = None
    irc_tls_port: int | None = None
    #: ``redis://host:port/db`` to share rooms, presence and history with other server
    #: processes; None keeps everything in this process (SQLite in ``data_dir``).
    redis_url: str | None = None
    #: Prefix of every Redis key and channel (several clusters, or tests, can share a Redis).
    redis_prefix: str = "imchat:"
    #: Seconds after which a node that stopped heartbeating is taken for dead and its users
    #: are shown offline.
    node_timeout: float = 15.0
    #: Replicas that must confirm a message (Redis ``WAIT``) before its ``ok``; 0: none.
    redis_wait: int = 0
    #: Port of the HTTP face (API, webhooks, /ws, /healthz, /metrics) on ``host``; None: off,
    #: 0: any free port. TLS with the same certificate as the native port.
    http_port: int | None = None
    #: Seconds a guest identity stays held (its nick reserved for its ``resume``) after its
    #: last session ends (rev 2).
    guest_hold: float = 300.0
    #: Undelivered DMs that may wait per recipient; one more is ``limit_reached``. 0: no limit.
    max_queued: int = 1000
    #: Of those, how many one sender (by nick) may have waiting for one recipient; one more is
    #: ``limit_reached`` for that sender only, so no stranger can fill a queue alone. 0: no
    #: share (only ``max_queued``).
    max_queued_per_sender: int = 100
    #: Accept-queue length (capped by net.core.somaxconn): a reconnect storm must fit.
    listen_backlog: int = 4096
    #: Bind every listening port with SO_REUSEPORT, so several nodes of one cluster on one
    #: machine share its ports and the kernel spreads connections over them (one core each).
    reuse_port: bool = False
    #: SO_SNDBUF of each client socket, so the kernel holds at most about this much (Linux
    #: doubles it) per client that stops reading; 0 leaves the kernel's autotuning.
    socket_send_buffer: int = 256 * 1024
    #: Retention: delete messages older than this many days (0: keep them all).
    retain_days: float = 0.0
    #: Retention: keep at most this many newest messages per stream (0: all).
    retain_messages: int = 0
    #: Start even though the data dir shows an earlier store and the store is empty (a lost
    #: database is then replaced by a new, empty one).
    fresh_store: bool = False
    #: Seconds during which repeated errors from one code site are counted, not logged.
    error_log_interval: float = 60.0
