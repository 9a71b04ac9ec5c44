"""The ``imchat`` command: ``server``, ``send`` and ``join`` (the terminal client)."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from imchat.accounts_cli import token_app, user_app
from imchat.hooks_cli import hook_app
from imchat.protocol import is_valid_nick

app = typer.Typer(
    help="imchat: a self-hosted terminal chat suite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(hook_app, name="hook")

EXIT_SERVER_ERROR = 1
EXIT_CONNECT = 3

Host = Annotated[str, typer.Option(envvar="IMCHAT_HOST", help="Server address.")]
Servers = Annotated[
    str,
    typer.Option(
        "--host",
        envvar="IMCHAT_HOST",
        help="Server address, or several nodes of one cluster: a:7667,b:7667 (tried in turn).",
    ),
]
Port = Annotated[int, typer.Option(envvar="IMCHAT_PORT", help="Server port.")]
Tls = Annotated[
    bool, typer.Option("--tls", envvar="IMCHAT_TLS", help="Connect with TLS (verified).")
]
Ca = Annotated[
    Path | None,
    typer.Option(envvar="IMCHAT_CA", help="PEM CA to verify the server with (implies --tls)."),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        envvar="IMCHAT_DATA_DIR",
        help="Data directory [default: ./imchat-data if present, else the user data dir].",
    ),
]


def run_async(coro: object) -> object:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


#: Control characters (newline included: an error is one line), DEL, C1 and the bidi
#: controls: what a server says must not drive the terminal it is printed to.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # Control Pictures: ␛ for ESC
    return "\u2421" if code == 0x7F else f"\\u{code:04x}"


def _fail(message: str, code: int) -> typer.Exit:
    """One line on stderr. The message may quote the server (network text): its control
    characters are shown, not sent to the terminal."""
    typer.echo(f"imchat: {_UNSAFE.sub(_visible, message)}", err=True)
    return typer.Exit(code)


@app.command()
def server(
    host: Annotated[
        str, typer.Option(envvar="IMCHAT_HOST", help="Address to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Port = 7667,
    data_dir: DataDir = None,
    log_level: Annotated[
        str, typer.Option(envvar="IMCHAT_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    max_frame: Annotated[
        int, typer.Option(envvar="IMCHAT_MAX_FRAME", help="Largest client frame, in bytes.")
    ] = 65536,
    max_text: Annotated[
        int, typer.Option(envvar="IMCHAT_MAX_TEXT", help="Longest message, in characters.")
    ] = 4000,
    idle_timeout: Annotated[
        float, typer.Option(envvar="IMCHAT_IDLE_TIMEOUT", help="Seconds of silence before close.")
    ] = 90.0,
    max_buffer: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_MAX_BUFFER", help="Bytes a client may fall behind before slow_consumer."
        ),
    ] = 1024 * 1024,
    rate: Annotated[
        float,
        typer.Option(envvar="IMCHAT_RATE", help="Messages per second per session (0: no limit)."),
    ] = 20.0,
    burst: Annotated[
        int, typer.Option(envvar="IMCHAT_BURST", help="Messages a session may send at once.")
    ] = 40,
    read_rate: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_READ_RATE",
            help="history/users/markers/mark requests per second per session (0: no limit).",
        ),
    ] = 20.0,
    read_burst: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_READ_BURST",
            help="Such requests a session may send at once (a reconnect sends one or two per"
            " conversation).",
        ),
    ] = 500,
    addr_read_rate: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_ADDR_READ_RATE",
            help="The same requests per second shared by all guests of one address, or by all"
            " sessions of one account, on each node (0: no limit).",
        ),
    ] = 100.0,
    addr_read_burst: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_ADDR_READ_BURST",
            help="Such requests one address's guests (or one account) may send at once.",
        ),
    ] = 2000,
    motd: Annotated[
        str | None, typer.Option(envvar="IMCHAT_MOTD", help="Message of the day in welcome.")
    ] = None,
    require_account: Annotated[
        bool,
        typer.Option(
            envvar="IMCHAT_REQUIRE_ACCOUNT", help="Refuse guests (nicks without an account)."
        ),
    ] = False,
    max_connections_per_ip: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_MAX_CONNECTIONS_PER_IP", help="Open connections per address (0: any)."
        ),
    ] = 128,
    hello_timeout: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_HELLO_TIMEOUT", help="Seconds to complete TLS and hello (0: forever)."
        ),
    ] = 10.0,
    auth_failures: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_AUTH_FAILURES",
            help="Failed logins per address per --auth-window before rate_limited (0: any).",
        ),
    ] = 5,
    auth_window: Annotated[
        float, typer.Option(envvar="IMCHAT_AUTH_WINDOW", help="Seconds failed logins count.")
    ] = 60.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="IMCHAT_TLS_CERT", help="PEM certificate chain: serve TLS."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="IMCHAT_TLS_KEY", help="PEM private key for --tls-cert.")
    ] = None,
    irc_port: Annotated[
        int | None,
        typer.Option(envvar="IMCHAT_IRC_PORT", help="Also serve IRC on this port (e.g. 6667)."),
    ] = None,
    irc_tls_port: Annotated[
        int | None,
        typer.Option(
            envvar="IMCHAT_IRC_TLS_PORT",
            help="Also serve IRC over TLS on this port (e.g. 6697; needs --tls-cert/--tls-key).",
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            envvar="IMCHAT_REDIS_URL",
            help="Share rooms, presence and history with other servers via this Redis "
            "(redis://host:6379/0, or redis+sentinel://h1:26379,h2:26379/service); "
            "see docs/redis.md.",
        ),
    ] = None,
    redis_prefix: Annotated[
        str, typer.Option(envvar="IMCHAT_REDIS_PREFIX", help="Prefix of every Redis key.")
    ] = "imchat:",
    node_timeout: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_NODE_TIMEOUT",
            help="With --redis: seconds after which a silent server's users go offline.",
        ),
    ] = 15.0,
    redis_wait: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_REDIS_WAIT",
            min=0,
            help="With --redis: acknowledge a message only once this many replicas have it.",
        ),
    ] = 0,
    http_port: Annotated[
        int | None,
        typer.Option(
            envvar="IMCHAT_HTTP_PORT",
            help="Serve the HTTP API, webhooks, /ws, /healthz and /metrics on this port "
            "(0: any free port); see docs/http.md.",
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option(envvar="IMCHAT_LOG_FORMAT", help="text, or json: one object per line.")
    ] = "text",
    guest_hold: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_GUEST_HOLD",
            help="Seconds a guest's nick stays reserved for it after its last session ends.",
        ),
    ] = 300.0,
    max_queued: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_MAX_QUEUED",
            help="Undelivered direct messages that may wait per recipient (0: no limit).",
        ),
    ] = 1000,
    max_queued_per_sender: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_MAX_QUEUED_PER_SENDER",
            help="Of those, how many one sender may have waiting for one recipient (0: no share).",
        ),
    ] = 100,
    max_topic: Annotated[
        int, typer.Option(envvar="IMCHAT_MAX_TOPIC", help="Longest room topic, in characters.")
    ] = 500,
    max_rooms: Annotated[
        int,
        typer.Option(envvar="IMCHAT_MAX_ROOMS", help="Rooms a user may be in at once (0: any)."),
    ] = 256,
    guest_rooms_per_minute: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_GUEST_ROOMS_PER_MINUTE",
            help="Rooms a guest may create per minute, after --guest-rooms-burst (0: any).",
        ),
    ] = 1.0,
    guest_rooms_burst: Annotated[
        int,
        typer.Option(envvar="IMCHAT_GUEST_ROOMS_BURST", help="Rooms a guest may create at once."),
    ] = 20,
    addr_rooms_per_minute: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_ADDR_ROOMS_PER_MINUTE",
            help="Rooms the guests of one address may create per minute together (0: any).",
        ),
    ] = 2.0,
    addr_rooms_burst: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_ADDR_ROOMS_BURST", help="Rooms an address's guests may create at once."
        ),
    ] = 40,
    addr_guests_per_minute: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_ADDR_GUESTS_PER_MINUTE",
            help="New guest identities (hellos taking a free guest nick) per address per minute "
            "(0: any).",
        ),
    ] = 300.0,
    addr_guests_burst: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_ADDR_GUESTS_BURST",
            help="New guest identities an address may begin at once.",
        ),
    ] = 300,
    guest_room_cap: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_GUEST_ROOM_CAP",
            help="Guests create rooms only while fewer exist; accounts are not bound (0: no cap).",
        ),
    ] = 10000,
    addr_rate: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_ADDR_RATE",
            help="Messages and joins per second per client address, all its sessions (and "
            "with --redis all nodes) together (0: no limit).",
        ),
    ] = 40.0,
    addr_burst: Annotated[
        int,
        typer.Option(envvar="IMCHAT_ADDR_BURST", help="Messages an address may send at once."),
    ] = 80,
    auth_logins: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_AUTH_LOGINS",
            help="Password logins (right or wrong) per address per --auth-window (0: any).",
        ),
    ] = 30,
    max_output_total: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_MAX_OUTPUT_TOTAL",
            help="Bytes of unsent output all clients together may hold before the largest "
            "owers are cut as slow_consumer (0: no bound).",
        ),
    ] = 256 * 1024 * 1024,
    socket_send_buffer: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_SOCKET_SEND_BUFFER",
            help="SO_SNDBUF of client sockets, in bytes (0: the kernel's autotuning).",
        ),
    ] = 256 * 1024,
    listen_backlog: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_LISTEN_BACKLOG",
            help="Accept-queue length (capped by net.core.somaxconn).",
        ),
    ] = 4096,
    reuse_port: Annotated[
        bool,
        typer.Option(
            "--reuse-port",
            envvar="IMCHAT_REUSE_PORT",
            help="Share the listening ports with other nodes of the cluster on this machine "
            "(SO_REUSEPORT; needs --redis): the kernel spreads connections over them.",
        ),
    ] = False,
    error_log_interval: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_ERROR_LOG_INTERVAL",
            help="Seconds during which repeats of one error are counted, not logged.",
        ),
    ] = 60.0,
    retain_days: Annotated[
        float,
        typer.Option(
            envvar="IMCHAT_RETAIN_DAYS", help="Delete messages older than this (0: keep all)."
        ),
    ] = 0.0,
    retain_messages: Annotated[
        int,
        typer.Option(
            envvar="IMCHAT_RETAIN_MESSAGES",
            help="Keep at most this many newest messages per room/DM stream (0: all).",
        ),
    ] = 0,
    fresh_store: Annotated[
        bool,
        typer.Option(
            envvar="IMCHAT_FRESH_STORE",
            help="Start on an empty store even though the data dir shows an earlier one "
            "(after a lost database; a new store, a new admin token).",
        ),
    ] = False,
) -> None:
    """Run the chat server until SIGINT or SIGTERM."""
    from imchat.server import ChatServer, ServerConfig
    from imchat.server.config import default_data_dir
    from imchat.server.logformat import formatter
    from imchat.server.store import StoreUnavailable

    if (tls_cert is None) != (tls_key is None):
        raise _fail("TLS needs both --tls-cert and --tls-key", 2)
    if irc_tls_port is not None and tls_cert is None:
        raise _fail("--irc-tls-port needs --tls-cert and --tls-key", 2)
    try:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    logging.basicConfig(level=log_level.upper(), handlers=[handler])
    config = ServerConfig(
        host=host,
        port=port,
        data_dir=data_dir or default_data_dir(),
        max_frame=max_frame,
        max_text=max_text,
        idle_timeout=idle_timeout,
        max_buffer=max_buffer,
        rate=rate,
        burst=burst,
        read_rate=read_rate,
        read_burst=read_burst,
        addr_read_rate=addr_read_rate,
        addr_read_burst=addr_read_burst,
        motd=motd,
        log_level=log_level,
        require_account=require_account,
        max_connections_per_ip=max_connections_per_ip,
        hello_timeout=hello_timeout,
        auth_failures=auth_failures,
        auth_window=auth_window,
        tls_cert=tls_cert,
        tls_key=tls_key,
        irc_port=irc_port,
        irc_tls_port=irc_tls_port,
        redis_url=redis,
        redis_prefix=redis_prefix,
        node_timeout=node_timeout,
        redis_wait=redis_wait,
        http_port=http_port,
        guest_hold=guest_hold,
        max_queued=max_queued,
        max_queued_per_sender=max_queued_per_sender,
        fresh_store=fresh_store,
        max_topic=max_topic,
        max_rooms=max_rooms,
        guest_rooms_per_minute=guest_rooms_per_minute,
        guest_rooms_burst=guest_rooms_burst,
        addr_rooms_per_minute=addr_rooms_per_minute,
        addr_rooms_burst=addr_rooms_burst,
        guest_room_cap=guest_room_cap,
        addr_guests_per_minute=addr_guests_per_minute,
        addr_guests_burst=addr_guests_burst,
        addr_rate=addr_rate,
        addr_burst=addr_burst,
        auth_logins=auth_logins,
        max_output_total=max_output_total,
        socket_send_buffer=socket_send_buffer,
        listen_backlog=listen_backlog,
        reuse_port=reuse_port,
        error_log_interval=error_log_interval,
        retain_days=retain_days,
        retain_messages=retain_messages,
    )
    if guest_hold < 0 or max_queued < 0 or max_queued_per_sender < 0:
        raise _fail(
            "--guest-hold, --max-queued and --max-queued-per-sender must not be negative", 2
        )
    if node_timeout <= 0:
        raise _fail("--node-timeout must be positive", 2)
    if reuse_port and redis is None:
        raise _fail(
            "--reuse-port needs --redis: without it each process keeps its own rooms, users "
            "and history, and connections spread over the processes would not see each other",
            2,
        )
    try:
        run_async(ChatServer(config).serve_forever())
    except OSError as exc:
        raise _fail(f"cannot start the server: {exc}", 1) from None
    except StoreUnavailable as exc:
        raise _fail(str(exc), 1) from None


def _default_nick() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name if is_valid_nick(name) else "imchat-send"


@app.command()
def send(
    text: Annotated[
        str | None,
        typer.Argument(
            help="The message; '-' (or none, with a pipe) reads standard input, one per line.",
            show_default=False,
        ),
    ] = None,
    room: Annotated[str | None, typer.Option(help="Say TEXT in this room.")] = None,
    to: Annotated[
        str | None, typer.Option(help="Send TEXT as a direct message to this user.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Announce TEXT to everyone online (admin only).")
    ] = False,
    nick: Annotated[
        str | None,
        typer.Option(
            envvar="IMCHAT_NICK",
            help="Nick to send as [default: admin with --all, else your login name].",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="IMCHAT_TOKEN",
            help="Account token [default with --all: the data dir's admin.token].",
        ),
    ] = None,
    host: Servers = "127.0.0.1",
    port: Port = 7667,
    data_dir: DataDir = None,
    tls: Tls = False,
    ca: Ca = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the account password from stdin's first line."),
    ] = False,
    reply_to: Annotated[
        int | None,
        typer.Option("--reply-to", metavar="SEQ", help="Send TEXT as a reply to message SEQ."),
    ] = None,
    react: Annotated[
        int | None,
        typer.Option(
            "--react", metavar="SEQ", help="Add TEXT (an emoji) as a reaction to message SEQ."
        ),
    ] = None,
    create: Annotated[
        bool,
        typer.Option("--create", help="With --room: create the room if it does not exist."),
    ] = False,
) -> None:
    """Send messages from scripts; exit 0 only once the server acknowledged every one."""
    import ssl

    from imchat.client import Connection, ConnectionClosed, ServerError
    from imchat.client.resume import ResumeStore
    from imchat.client.send import NotUtf8, Target, held_nick_advice, send_messages
    from imchat.client.servers import BadServerList, connect_first, parse_servers, redial
    from imchat.client.tls import client_context, describe_tls_error
    from imchat.server.config import default_data_dir

    if (room is not None) + (to is not None) + all_ != 1:
        raise _fail("say where: exactly one of --room, --to or --all", 2)
    if all_ and token is None:
        token_file = (data_dir or default_data_dir()) / "admin.token"
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise _fail(
                f"--all needs an admin token: cannot read {token_file}: {exc.strerror}", 2
            ) from None
        nick = nick or "admin"
    if create and room is None:
        raise _fail("--create goes with --room: only rooms are created by sending", 2)
    if reply_to is not None and react is not None:
        raise _fail("--reply-to and --react do not mix: a reaction answers by itself", 2)
    if reply_to is not None and all_:
        raise _fail("announcements take no replies (--reply-to with --all)", 2)
    if text is None:
        # `echo done | imchat send --room ops`, like logger(1); a terminal would just wait.
        if sys.stdin.isatty():
            raise _fail("say what: give TEXT, or '-' (or a pipe) for one message per line", 2)
        text = "-"
    if password_stdin and text == "-":
        raise _fail("--password-stdin needs TEXT as an argument: stdin holds the password", 2)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    target = Target(
        room=room, to=to, everyone=all_, reply_to=reply_to, react=react, create_room=create
    )
    texts = None if text == "-" else [text]
    try:
        context = client_context(ca) if tls or ca is not None else None
    except (OSError, ssl.SSLError) as exc:
        raise _fail(f"cannot use --ca {ca}: {exc}", 2) from None

    send_nick = nick or _default_nick()
    try:
        servers = parse_servers(host, port)
    except BadServerList as exc:
        raise _fail(f"--host: {exc}", 2) from None
    where = ",".join(map(str, servers))

    async def main() -> int:
        index = 0

        async def next_server() -> Connection:
            # A lost connection moves on to the next server (the nodes of one service).
            nonlocal index
            conn, index = await redial(servers, ssl=context, start=index + 1)
            return conn

        try:
            conn, index = await connect_first(servers, ssl=context)
        except ssl.SSLError as exc:
            raise _fail(describe_tls_error(exc, where), EXIT_CONNECT) from None
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror or str(exc) if isinstance(exc, OSError) else "timed out"
            raise _fail(f"cannot connect to {where}: {reason}", EXIT_CONNECT) from None
        try:
            return await send_messages(
                conn,
                send_nick,
                target,
                texts,
                token=token,
                password=password,
                resumes=ResumeStore(),
                redial=next_server if len(servers) > 1 else None,
            )
        except ConnectionClosed as exc:
            if context is None and conn.welcome is None and exc.error is None:
                # A TLS server drops a plaintext hello without a word.
                raise _fail(
                    f"{where} closed the connection before welcome (TLS? try --tls)",
                    EXIT_CONNECT,
                ) from None
            raise
        finally:
            conn.abort()

    try:
        run_async(main())
    except ServerError as exc:
        if exc.code == "nick_taken" and token is None and password is None:
            raise _fail(held_nick_advice(send_nick, exc.message), EXIT_SERVER_ERROR) from None
        if exc.code == "no_such_room":
            raise _fail(
                f"no_such_room: there is no room {room} (--create makes it)", EXIT_SERVER_ERROR
            ) from None
        raise _fail(f"{exc.code}: {exc.message}", EXIT_SERVER_ERROR) from None
    except NotUtf8 as exc:
        raise _fail(str(exc), EXIT_SERVER_ERROR) from None
    except ConnectionClosed as exc:
        raise _fail(f"connection lost: {exc}", EXIT_CONNECT) from None


class JoinCommand(TyperCommand):
    """``imchat join``: its ``--help`` ends with the key bindings, read from the app itself."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from rich.markup import escape

        from imchat.tui.keys import keys_help

        text = keys_help()
        self.epilog = escape(text) if self.rich_markup_mode == "rich" else text
        super().format_help(ctx, formatter)


@app.command(cls=JoinCommand)
def join(
    nick: Annotated[
        str | None, typer.Option(envvar="IMCHAT_NICK", help="Your nick (default: from config).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            envvar="IMCHAT_HOST",
            help="Server address, or several nodes of one cluster: a:7667,b:7667 "
            "(default: 127.0.0.1).",
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="IMCHAT_PORT", help="Server port (default: 7667).")
    ] = None,
    room: Annotated[
        str | None,
        typer.Option(
            envvar="IMCHAT_ROOM", help='Room to join on connect (default: lobby; "": none).'
        ),
    ] = None,
    password: Annotated[
        str | None, typer.Option(envvar="IMCHAT_PASSWORD", help="Password of your account.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="IMCHAT_TOKEN", help="Token of your account.")
    ] = None,
    tls: Annotated[
        bool | None,
        typer.Option("--tls/--no-tls", envvar="IMCHAT_TLS", help="Connect with TLS (verified)."),
    ] = None,
    ca: Ca = None,
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="IMCHAT_CONFIG",
            help="Config file (default: ~/.config/imchat/config.toml).",
        ),
    ] = None,
) -> None:
    """Open the terminal chat client.

    Defaults come from the config file; flags and IMCHAT_* variables override it.
    """
    from imchat.client.servers import BadServerList, parse_servers
    from imchat.client.tls import client_context
    from imchat.tui import run_tui
    from imchat.tui.config import ConfigError, load

    try:
        settings = load(config)
    except ConfigError as exc:
        raise _fail(f"config: {exc}", 2) from None
    nick = nick or settings.nick
    if not nick:
        raise _fail("no nick: pass --nick, set IMCHAT_NICK, or set nick in the config file", 2)
    room = room if room is not None else settings.room if settings.room is not None else "lobby"
    ca = ca if ca is not None else settings.ca
    use_tls = tls if tls is not None else bool(settings.tls)
    context = client_context(ca) if use_tls or ca is not None else None
    host = host or settings.host or "127.0.0.1"
    port = port if port is not None else settings.port or 7667
    try:
        parse_servers(host, port)
    except BadServerList as exc:
        raise _fail(f"--host: {exc}", 2) from None
    raise typer.Exit(
        run_tui(
            host,
            port,
            nick,
            room or None,
            password=password,
            token=token,
            tls=context,
            config=settings,
        )
    )


@app.command()
def web(
    nick: Annotated[str, typer.Option(envvar="IMCHAT_NICK", help="The nick the browser uses.")],
    bind: Annotated[
        str,
        typer.Option(envvar="IMCHAT_WEB_BIND", help="Address the web page listens on."),
    ] = "127.0.0.1",
    web_port: Annotated[
        int, typer.Option(envvar="IMCHAT_WEB_PORT", help="Port the web page listens on.")
    ] = 8667,
    web_token: Annotated[
        str | None,
        typer.Option(
            envvar="IMCHAT_WEB_TOKEN",
            help="Token a browser must present [default when not on loopback: a new one].",
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(help="The URL browsers reach this at [default: http://BIND:WEB_PORT]."),
    ] = None,
    host: Host = "127.0.0.1",
    port: Port = 7667,
    room: Annotated[
        str | None, typer.Option(envvar="IMCHAT_ROOM", help="Room to join on connect.")
    ] = "lobby",
    password: Annotated[
        str | None, typer.Option(envvar="IMCHAT_PASSWORD", help="Password of your account.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="IMCHAT_TOKEN", help="Token of your account.")
    ] = None,
    tls: Tls = False,
    ca: Ca = None,
) -> None:
    """The terminal client in a browser (textual-serve); loopback only unless given a token."""
    import secrets

    from imchat.web import WebServer, is_loopback, join_command
    from imchat.web import public_url as default_url

    if not is_valid_nick(nick):
        raise _fail(f"{nick!r} is not a valid nick", 2)
    if not is_loopback(bind):
        web_token = web_token or secrets.token_urlsafe(24)
        typer.echo(
            f"imchat: WARNING: serving the chat client on {bind}, reachable from other machines;"
            " anyone with the token below can chat as you. The page is plain HTTP: put it behind"
            " a TLS proxy before using it over a network you do not trust.",
            err=True,
        )
    # The client processes inherit these; the command line (visible in ps) carries none.
    if password is not None:
        os.environ["IMCHAT_PASSWORD"] = password
    if token is not None:
        os.environ["IMCHAT_TOKEN"] = token
    url = public_url or default_url(bind, web_port)
    command = join_command(nick, host, port, room, tls=tls, ca=str(ca) if ca else None)
    if web_token is not None:
        typer.echo(f"imchat: open {url}/?token={web_token}", err=True)
    WebServer(command, bind, web_port, url, web_token).serve()


def main() -> None:
    # A closed stdout (e.g. `imchat ... | head`) is not worth a traceback.
    try:
        app()
    except BrokenPipeError:
        os._exit(1)
