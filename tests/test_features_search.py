"""Revision 3: search over the streams a user may read, newest first, with edits and
deletes reflected. Runs on both backends."""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import Clients, join

from imchat.client import Connection, ServerError

pytestmark = pytest.mark.server_config(rate=0)


async def _error(conn: Connection, kind: str, **fields: Any) -> str:
    with pytest.raises(ServerError) as info:
        await conn.request(kind, **fields)
    return info.value.code


def _texts(reply: dict[str, Any]) -> list[str]:
    return [m["text"] for m in reply["messages"]]


async def test_search_covers_readable_streams_only(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    admin = await connect.admin()
    await join(alice, "lobby")
    await join(carol, "secret")
    await carol.request("say", room="secret", text="deploy plan in secret")
    await alice.request("say", room="lobby", text="the Deploy is green")
    await bob.request("dm", to="alice", text="deploy tonight?")
    await carol.request("dm", to="bob", text="deploy between carol and bob")
    await admin.request("announce", text="deploy freeze friday")
    found = await alice.request("search", text="DEPLOY")
    assert sorted(_texts(found)) == [
        "deploy freeze friday",
        "deploy tonight?",
        "the Deploy is green",
    ]
    keys = [(m["ts"], m["seq"]) for m in found["messages"]]
    assert keys == sorted(keys, reverse=True)  # newest first (streams may share a ts)
    # any room may be named (rooms are public), and only that stream is searched
    named = await alice.request("search", text="deploy", room="secret")
    assert _texts(named) == ["deploy plan in secret"]
    dm = await alice.request("search", text="deploy", **{"with": "bob"})
    assert _texts(dm) == ["deploy tonight?"]
    assert _texts(await alice.request("search", text="deploy", announcements=True)) == [
        "deploy freeze friday"
    ]
    assert await _error(alice, "search", text="x", room="nowhere") == "no_such_room"
    assert await _error(alice, "search", text="x", **{"with": "nobody"}) == "no_such_user"


async def test_every_term_must_match(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    for text in ("red apple", "green apple", "red car", "Apple, RED!"):
        await alice.request("say", room="lobby", text=text)
    assert _texts(await alice.request("search", text="apple red")) == ["Apple, RED!", "red apple"]
    assert _texts(await alice.request("search", text="  banana ")) == []
    assert await _error(alice, "search", text="   ") == "bad_text"
    assert await _error(alice, "search", text="") == "bad_text"
    assert await _error(alice, "search", text="x", room="lobby", announcements=True) == (
        "bad_request"
    )


async def test_edits_and_deletes_are_reflected(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    typo = await alice.request("say", room="lobby", text="meeting at noon")
    edit = await alice.request("edit", room="lobby", seq=typo["seq"], text="meeting at three")
    found = await alice.request("search", text="meeting")
    # the message is found once, as its latest edit
    assert [(m.get("kind"), m["seq"], m.get("target")) for m in found["messages"]] == [
        ("edit", edit["seq"], typo["seq"])
    ]
    assert _texts(await alice.request("search", text="noon")) == []
    assert _texts(await alice.request("search", text="three")) == ["meeting at three"]
    await alice.request("delete", room="lobby", seq=typo["seq"])
    assert _texts(await alice.request("search", text="meeting")) == []
    # reactions are no search hits
    other = await alice.request("say", room="lobby", text="lunch?")
    await alice.request("react", room="lobby", seq=other["seq"], emoji="lunch")
    assert [m["seq"] for m in (await alice.request("search", text="lunch"))["messages"]] == [
        other["seq"]
    ]


async def test_newest_first_limit_and_before(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    oks = [await alice.request("say", room="lobby", text=f"ping {i}") for i in range(7)]
    page = await alice.request("search", text="ping", limit=3)
    assert _texts(page) == ["ping 6", "ping 5", "ping 4"]
    for m in page["messages"]:
        assert m["room"] == "lobby" and isinstance(m["ts"], float | int)
    # ts order first, equal ts in descending seq order
    keys = [(m["ts"], m["seq"]) for m in (await alice.request("search", text="ping"))["messages"]]
    assert keys == sorted(keys, reverse=True) and len(keys) == 7
    last_ts = oks[3]["ts"]
    older = await alice.request("search", text="ping", before=last_ts)
    assert all(m["ts"] < last_ts for m in older["messages"])
    assert {m["seq"] for m in older["messages"]} == {ok["seq"] for ok in oks if ok["ts"] < last_ts}
    # a limit above the maximum is taken as the maximum
    assert len((await alice.request("search", text="ping", limit=10**6))["messages"]) == 7
    assert await _error(alice, "search", text="ping", limit=0) == "bad_request"


async def test_before_far_in_the_future_or_past(server: Any, connect: Clients) -> None:
    alice = await connect("alice")
    await join(alice, "lobby")
    await alice.request("say", room="lobby", text="timeless")
    assert _texts(await alice.request("search", text="timeless", before=1e300)) == ["timeless"]
    assert _texts(await alice.request("search", text="timeless", before=-5)) == []


@pytest.mark.skipif(
    os.environ.get("IMCHAT_TEST_BACKEND") != "redis", reason="the scan bound is Redis's"
)
async def test_redis_scan_is_bounded_and_says_more(
    server: Any, connect: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imchat.server import features_redis

    monkeypatch.setattr(features_redis, "SEARCH_SCAN_LIMIT", 20)
    monkeypatch.setattr(features_redis, "SCAN_CHUNK", 10)
    alice = await connect("alice")
    await join(alice, "lobby")
    await alice.request("say", room="lobby", text="needle old")
    for i in range(30):
        await alice.request("say", room="lobby", text=f"hay {i}")
    cut = await alice.request("search", text="needle")
    assert (cut["messages"], cut["more"]) == ([], True)
    await alice.request("say", room="lobby", text="needle new")
    found = await alice.request("search", text="needle")
    assert _texts(found) == ["needle new"] and found["more"] is True
    # enough found before the bound: nothing unsearched could come first
    assert (await alice.request("search", text="hay 29", limit=1))["more"] is False
