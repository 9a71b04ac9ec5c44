"""``imchat user …`` and ``imchat token …``: administer accounts in a server's data directory.

They open the server's SQLite database directly (WAL mode lets them run beside a live
server), so they need file access to the data directory, which is the access control.
With ``IMCHAT_REDIS_URL`` set (as for ``imchat server --redis``, with ``IMCHAT_REDIS_PREFIX``
if the cluster uses one) they act on that cluster's accounts in Redis instead.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from imchat.server.store import Store

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option(
        envvar="IMCHAT_DATA_DIR",
        help="Server data directory [default: ./imchat-data if present, else the user data dir].",
    ),
]

user_app = typer.Typer(help="Manage accounts (registered nicks).", no_args_is_help=True)
token_app = typer.Typer(help="Manage account tokens.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"imchat: {message}", err=True)
    return typer.Exit(1)


def _with_store(
    data_dir: Path | None, action: Callable[..., Awaitable[T]], *, create: bool = False
) -> T:
    """Run ``action(store)`` on the server's store; one-line errors, exit 1.

    The store is the one ``imchat server`` would open with the same settings: Redis with
    ``IMCHAT_REDIS_URL`` (and ``IMCHAT_REDIS_PREFIX``), else SQLite in the data directory.
    """
    from imchat.server.accounts import AccountError
    from imchat.server.backend import open_store, sqlite_path
    from imchat.server.config import ServerConfig, default_data_dir
    from imchat.server.store import StoreUnavailable

    directory = data_dir or default_data_dir()
    config = ServerConfig(data_dir=directory, redis_url=os.environ.get("IMCHAT_REDIS_URL") or None)
    if config.redis_url is not None:
        config.redis_prefix = os.environ.get("IMCHAT_REDIS_PREFIX", config.redis_prefix)
        where = f"Redis at {config.redis_url}"
        store_errors: tuple[type[Exception], ...] = _redis_errors()
    else:
        where = f"the database in {directory}"
        store_errors = (OSError, sqlite3.Error)
        if not create and not sqlite_path(config).exists():
            raise _fail(f"no imchat database in {directory} (is --data-dir right?)")
        if create and not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
    try:
        return asyncio.run(_use(open_store(config), action))
    except (AccountError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from None
    except store_errors as exc:
        raise _fail(f"cannot use {where}: {exc}") from None


def _redis_errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import RedisError

    return (OSError, RedisError)


async def _use(store: Store, action: Callable[..., Awaitable[T]]) -> T:
    """Open ``store``, run ``action(store)``, close it."""
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def _read_password(password_stdin: bool) -> str:
    """One password: the first line of standard input, or typed twice without echo."""
    if password_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The nick to register.")],
    admin: Annotated[bool, typer.Option("--admin", help="May send announcements.")] = False,
    password_stdin: PasswordStdin = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="Token-only account (for bots).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Register NAME: from then on it cannot be used without its password or a token."""
    from imchat.server import accounts

    if no_password and password_stdin:
        raise _fail("--no-password and --password-stdin exclude each other")
    password = None if no_password else _read_password(password_stdin)
    _with_store(
        data_dir, lambda store: accounts.add_user(store, name, password, admin=admin), create=True
    )
    typer.echo(f"account {name} created{' (admin)' if admin else ''}", err=True)


@user_app.command("list")
def user_list(data_dir: DataDir = None) -> None:
    """List accounts: nick, whether admin, whether a password is set."""
    found = _with_store(data_dir, lambda store: store.list_accounts())
    rows = [(a.nick, "yes" if a.admin else "no", "yes" if a.password_hash else "no") for a in found]
    _table(("NICK", "ADMIN", "PASSWORD"), rows)


@user_app.command("remove")
def user_remove(name: str, data_dir: DataDir = None) -> None:
    """Delete NAME's account and tokens; the nick becomes first come, first served."""
    from imchat.server import accounts

    _with_store(data_dir, lambda store: accounts.remove_user(store, name))
    typer.echo(f"account {name} removed", err=True)


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: PasswordStdin = False, data_dir: DataDir = None) -> None:
    """Set NAME's password; sessions logged in with the old one are closed, tokens stay valid."""
    from imchat.server import accounts

    password = _read_password(password_stdin)
    _with_store(data_dir, lambda store: accounts.set_password(store, name, password))
    typer.echo(f"password of {name} changed", err=True)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="The account the token logs in as.")],
    label: Annotated[str, typer.Option(help="A note to tell tokens apart.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Print a new token for an account. It is shown once: only its hash is stored."""
    from imchat.server import accounts

    token = _with_store(data_dir, lambda store: accounts.create_token(store, user, label))
    typer.echo(token)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this account's.")] = None,
    data_dir: DataDir = None,
) -> None:
    """List tokens by id (a prefix of the token's hash, not the token)."""
    from imchat.server import accounts

    found = _with_store(data_dir, lambda store: accounts.list_tokens(store, user))
    rows = [
        (t.id, t.user, datetime.fromtimestamp(t.created, UTC).strftime("%Y-%m-%d %H:%M"), t.label)
        for t in found
    ]
    _table(("ID", "USER", "CREATED (UTC)", "LABEL"), rows)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The id from `token list`.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a token: new logins with it fail, and its sessions are closed within seconds."""
    from imchat.server import accounts

    _with_store(data_dir, lambda store: accounts.revoke_token(store, token_id))
    typer.echo(f"token {token_id} revoked", err=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
