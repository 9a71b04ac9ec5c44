"""``reply_to`` in an API post: accepted, checked and answered exactly as in ``say``/``dm``."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clients, join, next_event, pending_events
from httpfixtures import Http, http_fixture  # noqa: F401

pytestmark = pytest.mark.server_config(rate=0)

ROOM = "/api/v1/rooms/lobby/messages"


async def test_room_post_replies_to_a_message(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    await join(bob, "other")
    asked = await bob.request("say", room="lobby", text="deploy done?")
    await bob.request("say", room="other", text="one")
    await bob.request("say", room="other", text="two")
    await pending_events(bob)
    token = await http.account("deploy")
    status, body, _ = await http.post(
        ROOM, token=token, json={"text": "yes", "reply_to": asked["seq"]}
    )
    assert status == 200, body
    event = await next_event(bob, "msg")
    assert (event["text"], event.get("reply_to"), event["seq"]) == (
        "yes",
        asked["seq"],
        body["seq"],
    )
    status, body, _ = await http.get(ROOM, token=token)
    assert [m.get("reply_to") for m in body["messages"]] == [None, asked["seq"]]
    # An action may answer a message too.
    status, body, _ = await http.post(
        ROOM, token=token, json={"text": "waves", "kind": "action", "reply_to": asked["seq"]}
    )
    assert status == 200, body
    event = await next_event(bob, "msg")
    assert (event["kind"], event.get("reply_to")) == ("action", asked["seq"])


async def test_room_post_reply_errors_are_the_protocols(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    await join(bob, "other")
    await bob.request("say", room="lobby", text="only one here")
    for text in ("one", "two", "three"):
        await bob.request("say", room="other", text=text)
    await pending_events(bob)
    token = await http.account("deploy")
    cases: list[tuple[Any, int, str]] = [
        (99, 404, "no_such_message"),  # no such seq
        (3, 404, "no_such_message"),  # a seq of another room
        (0, 404, "no_such_message"),
        (-1, 400, "bad_request"),
        ("1", 400, "bad_request"),
        (1.5, 400, "bad_request"),
        (True, 400, "bad_request"),
        (2**63, 400, "bad_request"),
        (None, 400, "bad_request"),
    ]
    for reply_to, want_status, want_code in cases:
        status, body, _ = await http.post(
            ROOM, token=token, json={"text": "x", "reply_to": reply_to}
        )
        assert (status, body["code"]) == (want_status, want_code), (reply_to, body)
    assert await pending_events(bob) == []  # nothing was posted


async def test_dm_post_replies_to_a_message(http: Http, connect: Clients) -> None:
    token = await http.account("deploy")
    bob = await connect("bob")
    asked = await bob.request("dm", to="deploy", text="is it up?")
    await pending_events(bob)
    status, body, _ = await http.post(
        "/api/v1/dms/bob", token=token, json={"text": "it is", "reply_to": asked["seq"]}
    )
    assert status == 200, body
    event = await next_event(bob, "dm")
    assert (event["from"], event["text"], event.get("reply_to")) == (
        "deploy",
        "it is",
        asked["seq"],
    )
    for reply_to, want in ((7, (404, "no_such_message")), ("x", (400, "bad_request"))):
        status, body, _ = await http.post(
            "/api/v1/dms/bob", token=token, json={"text": "x", "reply_to": reply_to}
        )
        assert (status, body["code"]) == want, (reply_to, body)


async def test_announcements_take_no_reply_to(http: Http, connect: Clients) -> None:
    """``announce`` has no ``reply_to`` in the protocol; the API says so rather than
    posting the announcement as if it had not been asked."""
    status, body, _ = await http.post(
        "/api/v1/announcements", token=http.admin, json={"text": "hi", "reply_to": 1}
    )
    assert (status, body["code"]) == (400, "bad_request"), body
