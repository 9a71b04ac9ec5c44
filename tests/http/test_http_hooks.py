"""Webhooks: the services' documented payloads, signatures, and the ``imchat hook`` commands."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_BACKEND_URL, Clients, join, next_event, pending_events
from httpfixtures import Http, http_fixture  # noqa: F401
from typer.testing import CliRunner

from imchat.cli import app
from imchat.server.auth import hash_token, new_token
from imchat.server.hookstore import Hook
from imchat.server.http.adapters import fit, github
from imchat.server.http.hooks import signature_ok
from imchat.server.http.template import render

PAYLOADS = Path(__file__).parent / "payloads"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def add_hook(http: Http, kind: str, *, secret: str = "", template: str = "") -> str:
    """A hook posting to ``ops`` as the account ``bot``; its URL path."""
    store = http.server.store
    if await store.lookup_user("bot") is None:
        await http.account("bot")
    token = new_token()
    await store.add_hook(hash_token(token), Hook("", kind, "ops", "bot", secret, template, 1.0))
    return f"/hooks/{token}"


async def ops_member(connect: Clients) -> Any:
    bob = await connect("bob")
    await join(bob, "ops")
    return bob


def test_signature_matches_githubs_documented_example() -> None:
    # GitHub's docs ("Validating webhook deliveries") give this secret, body and signature.
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    documented = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_ok(secret, body, documented)
    assert not signature_ok(secret, body + b" ", documented)
    assert not signature_ok("another secret", body, documented)
    assert not signature_ok(secret, body, None)
    assert not signature_ok(secret, body, documented.replace("sha256=", "sha1="))


GITHUB_EVENTS = [
    ("push", "github-push.json", "[Codertocat/Hello-World] Codertocat deleted tag simple-tag"),
    (
        "pull_request",
        "github-pull_request.json",
        "[Codertocat/Hello-World] Codertocat opened pull request #2: Update the README with"
        " new information. https://github.com/Codertocat/Hello-World/pull/2",
    ),
    (
        "workflow_run",
        "github-workflow_run.json",
        "[octo-org/octo-repo] workflow test succeeded on master: build(test): check workflow"
        " run event payload https://github.com/octo-org/octo-repo/actions/runs/289782451",
    ),
    (
        "release",
        "github-release.json",
        "[Codertocat/Hello-World] Codertocat published release 0.0.1"
        " https://github.com/Codertocat/Hello-World/releases/tag/0.0.1",
    ),
]


@pytest.mark.parametrize(("event", "name", "text"), GITHUB_EVENTS)
async def test_github_events(
    http: Http, connect: Clients, event: str, name: str, text: str
) -> None:
    bob = await ops_member(connect)
    path = await add_hook(http, "github", secret="s3cret")
    body = payload(name)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": sign("s3cret", body),
    }
    status, reply, _ = await http.post(path, data=body, headers=headers)
    assert status == 200, reply
    assert reply["posted"] is True and reply["seq"] == 1
    msg = await next_event(bob, "msg")
    assert (msg["room"], msg["from"], msg["text"]) == ("ops", "bot", text)
    # GitHub redelivers with the same delivery id: stored once, sent once.
    status, again, _ = await http.post(path, data=body, headers=headers)
    assert (status, again["seq"]) == (200, 1)
    assert await pending_events(bob) == []


async def test_github_signature_is_required_and_checked(http: Http, connect: Clients) -> None:
    bob = await ops_member(connect)
    path = await add_hook(http, "github", secret="s3cret")
    body = payload("github-push.json")
    base = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    for signature in (None, sign("wrong", body), "sha256=00", sign("s3cret", body + b"\n")):
        headers = dict(base)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        status, reply, _ = await http.post(path, data=body, headers=headers)
        assert (status, reply["code"]) == (401, "auth_failed"), signature
    assert await pending_events(bob) == []


async def test_github_form_encoding_ping_and_other_events(http: Http, connect: Clients) -> None:
    bob = await ops_member(connect)
    path = await add_hook(http, "github", secret="s3cret")
    ping = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    headers = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign("s3cret", ping)}
    status, reply, _ = await http.post(path, data=ping, headers=headers)
    assert (status, reply) == (200, {"posted": False, "pong": True})
    issue = b'{"action": "opened", "repository": {"full_name": "a/b"}}'
    headers = {"X-GitHub-Event": "issues", "X-Hub-Signature-256": sign("s3cret", issue)}
    status, reply, _ = await http.post(path, data=issue, headers=headers)
    assert (status, reply) == (200, {"posted": False})
    # A hook set up with content type application/x-www-form-urlencoded: payload=<JSON>.
    from urllib.parse import urlencode

    form = urlencode({"payload": payload("github-release.json").decode()}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "release",
        "X-Hub-Signature-256": sign("s3cret", form),
    }
    status, reply, _ = await http.post(path, data=form, headers=headers)
    assert status == 200 and reply["posted"], reply
    assert "published release 0.0.1" in (await next_event(bob, "msg"))["text"]


async def test_alertmanager(http: Http, connect: Clients) -> None:
    bob = await ops_member(connect)
    path = await add_hook(http, "alertmanager")
    status, reply, _ = await http.post(
        path, data=payload("alertmanager.json"), headers={"Content-Type": "application/json"}
    )
    assert status == 200 and reply["posted"], reply
    msg = await next_event(bob, "msg")
    assert msg["text"] == (
        "[FIRING:2] InstanceDown: Instance down\n"
        "- firing instance=host1:9100, job=node, severity=page:"
        " host1:9100 of job node has been down for more than 5 minutes.\n"
        "- firing instance=host2:9100, job=node, severity=page:"
        " host2:9100 of job node has been down for more than 5 minutes."
    )
    resolved = json.loads(payload("alertmanager.json"))
    resolved["status"] = "resolved"
    resolved["alerts"] = resolved["alerts"][:1]
    resolved["alerts"][0]["status"] = "resolved"
    status, reply, _ = await http.post(path, json=resolved)
    assert status == 200
    assert (await next_event(bob, "msg"))["text"].startswith("[RESOLVED:1] InstanceDown")


async def test_generic_template(http: Http, connect: Clients) -> None:
    bob = await ops_member(connect)
    path = await add_hook(
        http, "generic", template="{level}: {msg.text} on {hosts.1} {missing}{{ok}} {count}"
    )
    document = {
        "level": "warn",
        "msg": {"text": "disk\r\nfull\x07"},
        "hosts": ["a", "b"],
        "count": 3,
    }
    status, reply, _ = await http.post(path, json=document, headers={"Idempotency-Key": "e-1"})
    assert status == 200 and reply["posted"], reply
    assert (await next_event(bob, "msg"))["text"] == "warn: disk\nfull  on b {ok} 3"
    status, again, _ = await http.post(path, json=document, headers={"Idempotency-Key": "e-1"})
    assert again["seq"] == reply["seq"]
    # Nothing to say: nothing posted.
    empty = await add_hook(http, "generic", template="{nothing}")
    status, reply, _ = await http.post(empty, json={"a": 1})
    assert (status, reply) == (200, {"posted": False})
    status, reply, _ = await http.post(
        path, data=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert (status, reply["code"]) == (400, "bad_request")


async def test_unknown_hook_and_missing_room(http: Http, connect: Clients) -> None:
    status, reply, _ = await http.post("/hooks/not-a-hook", json={"text": "hi"})
    assert (status, reply["code"]) == (401, "auth_failed")
    path = await add_hook(http, "generic")
    status, reply, _ = await http.post(path, json={"text": "hi"})  # nobody made room ops
    assert (status, reply["code"]) == (404, "no_such_room")


def test_template_never_runs_code() -> None:
    document = {"a": {"__class__": "x"}, "b": [1, {"c": None}]}
    assert render("{a.__class__}", document) == "x"  # a key, never an attribute
    assert render("{__class__.__mro__}", document) == ""
    assert render("{b.1.c}|{b.9}|{b}", document) == '||[1,{"c":null}]'
    assert render("{b.__len__}{a!r}{a:>9}", document) == "{a!r}{a:>9}"


def test_adapters_fit_text_to_the_protocol() -> None:
    assert fit("a\r\nb\x00c\x9b", 100) == "a\nb c"
    assert fit("x" * 10, 5) == "xxxx…"
    assert fit(" \x01 ", 5) == ""
    push = {
        "ref": "refs/heads/main",
        "commits": [{"id": "1"}, {"id": "2"}],
        "head_commit": {"message": "Fix the thing\n\nLong body"},
        "pusher": {"name": "ann"},
        "repository": {"full_name": "o/r"},
        "compare": "https://example.org/c",
        "forced": True,
    }
    assert github("push", push) == (
        "[o/r] ann pushed 2 commits to main (forced): Fix the thing https://example.org/c"
    )


async def test_hook_commands(http: Http, connect: Clients, tmp_path: Path) -> None:
    """``imchat hook add/list/remove`` on the running server's store."""
    bob = await ops_member(connect)
    await http.account("ci")
    env = {"IMCHAT_DATA_DIR": str(http.server.config.data_dir)}
    if REDIS_BACKEND_URL is not None:
        env |= {
            "IMCHAT_REDIS_URL": REDIS_BACKEND_URL,
            "IMCHAT_REDIS_PREFIX": http.server.config.redis_prefix,
        }
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    added = await asyncio.to_thread(run, "hook", "add", "github", "--room", "#Ops", "--user", "ci")
    assert added.exit_code == 0, added.output
    lines = dict(line.split(": ", 1) for line in added.stdout.splitlines() if ": " in line)
    path, secret = lines["url"], lines["secret"]
    body = payload("github-push.json")
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(secret, body)}
    status, reply, _ = await http.post(path, data=body, headers=headers)
    assert status == 200, reply
    assert (await next_event(bob, "msg"))["from"] == "ci"
    listed = await asyncio.to_thread(run, "hook", "list")
    assert listed.exit_code == 0
    row = listed.stdout.splitlines()[1].split()
    hook_id = row[0]
    assert row[1:5] == ["github", "ops", "ci", "yes"]
    assert path.removeprefix("/hooks/") not in listed.stdout  # the token is never shown again
    removed = await asyncio.to_thread(run, "hook", "remove", hook_id)
    assert removed.exit_code == 0, removed.output
    status, reply, _ = await http.post(path, data=body, headers=headers)
    assert (status, reply["code"]) == (401, "auth_failed")
    for bad in (
        ("hook", "add", "gitlab", "--room", "ops", "--user", "ci"),
        ("hook", "add", "generic", "--room", "ops", "--user", "nobody"),
        ("hook", "add", "generic", "--room", "bad room", "--user", "ci"),
        ("hook", "remove", "ffffffffffff"),
    ):
        result = await asyncio.to_thread(run, *bad)
        assert result.exit_code == 1, (bad, result.output)
        assert result.output.startswith("imchat: ")


async def test_deeply_nested_payload_is_bad_request(http: Http, connect: Clients) -> None:
    bob = await ops_member(connect)
    path = await add_hook(http, "generic")
    deep = b'{"text": "hi", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    status, reply, _ = await http.post(
        path, data=deep, headers={"Content-Type": "application/json"}
    )
    assert (status, reply["code"]) == (400, "bad_request"), reply
    assert await pending_events(bob) == []
