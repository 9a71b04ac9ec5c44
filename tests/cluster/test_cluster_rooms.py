"""Rooms across nodes: messages once and in seq order everywhere, membership per user."""

from __future__ import annotations

import asyncio

from .cluster_support import Client, Clients, Cluster, RawClient, is_type


async def join_all(room: str, *members: Client) -> None:
    for member in members:
        await member.request("join", room=room)


async def test_room_message_reaches_every_member_on_every_node_once(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(3)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    carol = await clients.connect(nodes[2], "carol")
    await join_all("lobby", alice, bob, carol)
    for node_index, sender in enumerate((alice, bob, carol)):
        reply = await sender.request("say", room="lobby", text=f"hi from {node_index}")
        assert reply["seq"] == node_index + 1
    for member in (alice, bob, carol):
        msgs = await member.collect(is_type("msg", room="lobby"), 3)
        assert [m["seq"] for m in msgs] == [1, 2, 3]
        assert [m["from"] for m in msgs] == ["alice", "bob", "carol"]
        assert [m["text"] for m in msgs] == ["hi from 0", "hi from 1", "hi from 2"]
    # Exactly once: a marker message after them is the next msg each member sees.
    await alice.request("say", room="lobby", text="end")
    for member in (alice, bob, carol):
        nxt = await member.wait_for(is_type("msg"))
        assert (nxt["seq"], nxt["text"]) == (4, "end")


async def test_join_and_part_events_cross_nodes(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(2)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    await alice.request("join", room="lobby")
    reply = await bob.request("join", room="#Lobby")
    assert sorted(reply["members"]) == ["alice", "bob"]
    joined = await alice.wait_for(is_type("joined", room="lobby", nick="bob"))
    assert isinstance(joined["ts"], float | int)
    await bob.request("part", room="lobby")
    parted = await alice.wait_for(is_type("parted", room="lobby"))
    assert parted["nick"] == "bob" and "reason" not in parted
    await bob.wait_for(is_type("parted", room="lobby", nick="bob"))
    # Bob is no longer a member anywhere: his say is refused, alice's reaches only alice.
    try:
        await bob.request("say", room="lobby", text="still here?")
    except Exception as exc:
        assert "not_in_room" in str(exc)
    else:
        raise AssertionError("a non-member could say")
    rooms = (await alice.request("rooms"))["rooms"]
    assert rooms == [{"room": "lobby", "count": 1, "topic": ""}]


async def test_membership_belongs_to_the_user_across_nodes(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    on_a = await clients.admin(nodes[0])
    on_b = await clients.admin(nodes[1])
    bob = await clients.connect(nodes[1], "bob")
    await on_a.request("join", room="ops")
    # The join on node A makes the user's session on node B a member too.
    await on_b.wait_for(is_type("joined", room="ops", nick="admin"))
    await bob.request("join", room="ops")
    await bob.request("say", room="ops", text="hello admin")
    for session in (on_a, on_b):
        msg = await session.wait_for(is_type("msg", room="ops"))
        assert (msg["from"], msg["text"], msg["seq"]) == ("bob", "hello admin", 1)
    # Node B knows the membership too: the session there may speak in the room.
    reply = await on_b.request("say", room="ops", text="from b")
    assert reply["seq"] == 2
    # A part from node B ends the membership of the session on node A as well.
    await on_b.request("part", room="ops")
    await on_a.wait_for(is_type("parted", room="ops", nick="admin"))
    try:
        await on_a.request("say", room="ops", text="gone?")
    except Exception as exc:
        assert "not_in_room" in str(exc)
    else:
        raise AssertionError("membership survived a part from another node")


async def test_topic_across_nodes(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(2)
    alice = await clients.connect(nodes[0], "alice")
    bob = await clients.connect(nodes[1], "bob")
    await join_all("lobby", alice, bob)
    await alice.request("topic", room="lobby", text="shared topic")
    event = await bob.wait_for(is_type("topic", room="lobby"))
    assert (event["topic"], event["by"]) == ("shared topic", "alice")
    reply = await bob.request("join", room="lobby")
    assert reply["topic"] == "shared topic"


async def test_seq_gapless_under_concurrent_senders_on_all_nodes(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(3)
    per_sender = 40
    senders = [
        await clients.connect(node, f"s{i}{j}") for i, node in enumerate(nodes) for j in (0, 1)
    ]
    listeners = [await clients.connect(node, f"l{i}") for i, node in enumerate(nodes)]
    await join_all("busy", *senders, *listeners)

    async def send_all(sender: Client) -> list[int]:
        replies = await asyncio.gather(
            *(
                sender.request("say", room="busy", text=f"{sender.nick} {k}")
                for k in range(per_sender)
            )
        )
        return [r["seq"] for r in replies]

    acked = await asyncio.gather(*(send_all(s) for s in senders))
    total = per_sender * len(senders)
    assert sorted(seq for seqs in acked for seq in seqs) == list(range(1, total + 1))
    histories = []
    for listener in listeners:
        msgs = await listener.collect(is_type("msg", room="busy"), total)
        assert [m["seq"] for m in msgs] == list(range(1, total + 1))
        histories.append([(m["seq"], m["from"], m["text"]) for m in msgs])
        # Each sender's own messages arrive in the order it sent them.
        for sender in senders:
            texts = [t for _, frm, t in histories[-1] if frm == sender.nick]
            assert texts == [f"{sender.nick} {k}" for k in range(per_sender)]
    assert histories[0] == histories[1] == histories[2]


async def test_reply_precedes_the_events_it_causes(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(2)
    bob = await clients.connect(nodes[1], "bob")
    raw = await RawClient.open(nodes[0].port)
    try:
        raw.send({"type": "hello", "proto": 1, "nick": "alice", "id": 1})
        frames = await raw.recv_until(lambda f: f.get("id") == 1)
        assert frames[-1]["type"] == "welcome"
        online = await raw.recv_until(is_type("online", nick="alice"))
        assert all(f.get("id") is None for f in online)
        await bob.request("join", room="lobby")
        for rid in range(2, 12):
            raw.send(
                {"type": "join", "room": "lobby", "id": rid}
                if rid == 2
                else {"type": "say", "room": "lobby", "text": f"m{rid}", "id": rid}
            )
            frames = await raw.recv_until(lambda f, rid=rid: f.get("id") == rid)
            # Nothing this request caused came before its reply.
            for frame in frames[:-1]:
                assert not (frame.get("type") == "msg" and frame.get("text") == f"m{rid}")
                assert not (frame.get("type") == "joined" and frame.get("nick") == "alice")
            assert frames[-1]["type"] == "ok"
            if rid == 2:
                await raw.recv_until(is_type("joined", nick="alice"))
            else:
                await raw.recv_until(is_type("msg", text=f"m{rid}"))
        raw.send({"type": "dm", "to": "bob", "text": "psst", "id": 99})
        frames = await raw.recv_until(lambda f: f.get("id") == 99)
        assert not any(f.get("type") == "dm" for f in frames)
        await raw.recv_until(is_type("dm", text="psst"))
        await bob.wait_for(is_type("dm", text="psst"))
    finally:
        raw.close()


async def test_history_identical_from_every_node(cluster: Cluster, clients: Clients) -> None:
    nodes = cluster.start_many(3)
    people = [await clients.connect(node, f"p{i}") for i, node in enumerate(nodes)]
    await join_all("lobby", *people)
    for round_ in range(5):
        for person in people:
            await person.request("say", room="lobby", text=f"{person.nick} r{round_}")
    await people[0].request("dm", to="p1", text="a dm")
    answers = [
        (await person.request("history", room="lobby", limit=500))["messages"] for person in people
    ]
    assert answers[0] == answers[1] == answers[2]
    assert [m["seq"] for m in answers[0]] == list(range(1, 16))
    # Entries are the events exactly as sent.
    live = await people[2].collect(is_type("msg", room="lobby"), 15)
    assert live == answers[0]
    # Anchors work the same on every node.
    for person in people:
        page = (await person.request("history", room="lobby", after=3, before=8, limit=2))[
            "messages"
        ]
        assert [m["seq"] for m in page] == [4, 5]
        latest = (await person.request("history", room="lobby", before=15, limit=3))["messages"]
        assert [m["seq"] for m in latest] == [12, 13, 14]
    dm_a = (await people[0].request("history", **{"with": "p1"}))["messages"]
    dm_b = (await people[1].request("history", **{"with": "p0"}))["messages"]
    assert dm_a == dm_b and [m["text"] for m in dm_a] == ["a dm"]


async def test_cid_retry_on_another_node_is_not_stored_twice(
    cluster: Cluster, clients: Clients
) -> None:
    nodes = cluster.start_many(2)
    on_a = await clients.admin(nodes[0])
    on_b = await clients.admin(nodes[1])
    watcher = await clients.connect(nodes[1], "watcher")
    await join_all("lobby", on_a, watcher)
    first = await on_a.request("say", room="lobby", text="once", cid="c-1")
    again = await on_b.request("say", room="lobby", text="once", cid="c-1")
    assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
    await on_a.request("say", room="lobby", text="next")
    msgs = await watcher.collect(is_type("msg", room="lobby"), 2)
    assert [m["text"] for m in msgs] == ["once", "next"]
    history = (await watcher.request("history", room="lobby"))["messages"]
    assert [m["text"] for m in history] == ["once", "next"]
