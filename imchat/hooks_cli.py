"""``imchat hook …``: webhooks that turn GitHub, Alertmanager or any JSON into room messages.

Like ``imchat user``, they act on the data directory's database (or, with
``IMCHAT_REDIS_URL``, the cluster's Redis), also while the server runs: a new hook works at
once. Served by ``imchat server --http-port`` at ``POST /hooks/<token>``.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from imchat.accounts_cli import DataDir, _fail, _table, _with_store

hook_app = typer.Typer(help="Manage webhooks (served with --http-port).", no_args_is_help=True)


class HookError(Exception):
    pass


@hook_app.command("add")
def hook_add(
    kind: Annotated[str, typer.Argument(help="github, alertmanager or generic.")],
    room: Annotated[str, typer.Option(help="The room its messages go to.")],
    user: Annotated[str, typer.Option("--user", help="The account its messages come from.")],
    secret: Annotated[
        str | None,
        typer.Option(
            help="Shared secret for X-Hub-Signature-256 [default for github: a new random one]."
        ),
    ] = None,
    template: Annotated[
        str,
        typer.Option(help="generic: the message, with {field.path} taken from the JSON."),
    ] = "",
    data_dir: DataDir = None,
) -> None:
    """Add a hook; prints its URL path (shown once: only its hash is stored) and secret."""
    from imchat.protocol import ProtocolError, normalize_room
    from imchat.server.auth import hash_token, new_token
    from imchat.server.hookstore import HOOK_KINDS, Hook

    if kind not in HOOK_KINDS:
        raise _fail(f"unknown kind {kind!r}: one of {', '.join(HOOK_KINDS)}")
    if template and kind != "generic":
        raise _fail("--template is for generic hooks")
    try:
        room = normalize_room(room)
    except ProtocolError as exc:
        raise _fail(exc.message) from None
    if secret is None and kind == "github":
        secret = secrets.token_hex(20)
    token = new_token()

    async def add(store: Any) -> None:
        record = await store.lookup_user(user.lower())
        if record is None or record.account is None:
            raise HookError(f"{user} has no account (imchat user add {user} --no-password)")
        hook = Hook("", kind, room, user.lower(), secret or "", template, time.time())
        await store.add_hook(hash_token(token), hook)

    try:
        _with_store(data_dir, add)
    except HookError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"url: /hooks/{token}")
    if secret:
        typer.echo(f"secret: {secret}")
    typer.echo(f"{kind} hook for #{room} added, posting as {user}", err=True)


@hook_app.command("list")
def hook_list(data_dir: DataDir = None) -> None:
    """List hooks by id (a prefix of the token's hash, not the token)."""
    found = _with_store(data_dir, lambda store: store.list_hooks())
    rows: list[tuple[str, ...]] = [
        (
            h.id,
            h.kind,
            h.room,
            h.user,
            "yes" if h.secret else "no",
            datetime.fromtimestamp(h.created, UTC).strftime("%Y-%m-%d %H:%M"),
            h.template,
        )
        for h in found
    ]
    _table(("ID", "KIND", "ROOM", "USER", "SECRET", "CREATED (UTC)", "TEMPLATE"), rows)


@hook_app.command("remove")
def hook_remove(
    hook_id: Annotated[str, typer.Argument(metavar="ID", help="The id from `hook list`.")],
    data_dir: DataDir = None,
) -> None:
    """Remove a hook: its URL answers 401 from then on."""
    if not _with_store(data_dir, lambda store: store.remove_hook(hook_id)):
        raise _fail(f"no hook with id {hook_id}")
    typer.echo(f"hook {hook_id} removed", err=True)
