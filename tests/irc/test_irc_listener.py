"""The IRC listener against a real ``imchat server --irc-port 0`` process.

Registration, CAP/SASL, each command with its numerics, tags, batches and chathistory, errors
for bad input, and an IRC user and a native user seeing each other in one room.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_BACKEND_URL, RawClient, ServerProcess, subprocess_env
from irc_client import IRC_AT, IrcClient, Received, sasl_plain

from imchat.server.irc import translate as tr
from imchat.server.irc.lines import MAX_LINE

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


class Running:
    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.port = proc.port
        match = IRC_AT.search(proc.output)
        assert match, proc.output
        self.irc_port = int(match.group(2))
        self.admin_token = (proc.data_dir / "admin.token").read_text().strip()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("irc") / "data"
    data.mkdir()
    # IMCHAT_TEST_BACKEND=redis runs the suite on the Redis backend, as the native suites do.
    backend: list[str] = []
    prefix = f"imchat-test-{uuid.uuid4().hex}:"
    if REDIS_BACKEND_URL is not None:
        backend = ["--redis", REDIS_BACKEND_URL, "--redis-prefix", prefix]
    proc = ServerProcess(
        data, "--irc-port", "0", "--motd", "hello from imchat", *backend, env=subprocess_env()
    )
    proc.start()
    try:
        yield Running(proc)
    finally:
        proc.cleanup()
        if REDIS_BACKEND_URL is not None:
            import redis

            client = redis.Redis.from_url(REDIS_BACKEND_URL)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.fixture
async def irc(running: Running) -> AsyncIterator[Any]:
    opened: list[IrcClient | RawClient] = []

    async def open_irc(nick: str | None = None, **kw: Any) -> IrcClient:
        client = await IrcClient.open(running.irc_port)
        opened.append(client)
        if nick is not None:
            await client.register(nick, **kw)
        return client

    async def open_native(nick: str, **fields: Any) -> RawClient:
        client = await RawClient.open(running.port)
        opened.append(client)
        await client.hello(nick, **fields)
        return client

    open_irc.native = open_native  # type: ignore[attr-defined]
    yield open_irc
    for client in opened:
        await client.close()


async def native_event(client: RawClient, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


# -- registration -----------------------------------------------------------------------------


async def test_registration_burst_and_isupport(irc: Any) -> None:
    nick = unique("reg")
    client = await irc()
    lines = await client.register(nick)
    codes = [r.command for r in lines]
    for code in ("001", "002", "003", "004", "005", "375", "372", "376"):
        assert code in codes, codes
    welcome = lines[codes.index("001")]
    assert welcome.params[0] == nick and welcome.line.source == "imchat"
    isupport = " ".join(lines[codes.index("005")].params)
    for token in ("CHANTYPES=#", "CASEMAPPING=ascii", "CHANNELLEN=65", "NICKLEN=32"):
        assert token in isupport
    assert "TOPICLEN=500" in isupport and "CHATHISTORY=500" in isupport
    assert any("hello from imchat" in r.params[-1] for r in lines if r.command == "372")


async def test_cap_ls_302_and_nak(irc: Any) -> None:
    client = await irc()
    client.send("CAP LS 302")
    ls = await client.expect("CAP")
    offered = ls.params[-1].split()
    for cap in ("sasl=PLAIN", "server-time", "message-tags", "echo-message", "batch"):
        assert cap in offered
    assert "draft/chathistory" in offered and "multi-prefix" in offered
    client.send("CAP REQ :server-time no-such-cap")
    nak = await client.expect("CAP")
    assert nak.params[1:] == ["NAK", "server-time no-such-cap"]
    client.send("CAP REQ :server-time", "CAP LIST")
    assert (await client.expect("CAP")).params[1] == "ACK"
    assert (await client.expect("CAP")).params[1:] == ["LIST", "server-time"]
    # Registration waits for CAP END.
    client.send(f"NICK {unique('cap')}", "USER u 0 * :u", "PING :before-end")
    pong = await client.expect("PONG")
    assert pong.params[-1] == "before-end"
    assert not any(r.command == "001" for r in client.seen)
    client.send("CAP END")
    await client.expect("001")


async def test_nick_taken_then_another(irc: Any) -> None:
    nick = unique("taken")
    await irc(nick)
    second = await irc()
    second.send(f"NICK {nick}", "USER u 0 * :u")
    taken = await second.expect("433")
    assert taken.params[1] == nick
    second.send(f"NICK {nick}_")
    assert (await second.expect("001")).params[0] == f"{nick}_"


async def test_bad_nick_and_commands_before_registration(irc: Any) -> None:
    client = await irc()
    client.send("JOIN #x")
    assert (await client.expect("451")).params[-1] == "You have not registered"
    client.send("NICK 9bad", "USER u 0 * :u")
    assert (await client.expect("432")).params[1] == "9bad"
    client.send(f"NICK {unique('good')}")
    await client.expect("001")


async def test_pass_with_admin_token_and_wrong_password(irc: Any, running: Running) -> None:
    admin = await irc()
    await admin.register("admin", password=f"token:{running.admin_token}")
    wrong = await irc()
    wrong.send("PASS nope", "NICK admin", "USER u 0 * :u")
    rest = await wrong.closed()
    assert [r.command for r in rest][-2:] == ["464", "ERROR"]


async def test_sasl_plain(irc: Any, running: Running) -> None:
    client = await irc()
    client.send("CAP LS 302", "NICK someone", "USER u 0 * :u", "CAP REQ :sasl")
    await client.expect(lambda r: r.command == "CAP" and r.params[1] == "ACK")
    client.send("AUTHENTICATE PLAIN")
    assert (await client.expect("AUTHENTICATE")).params == ["+"]
    client.send("AUTHENTICATE " + sasl_plain("admin", "token:" + running.admin_token))
    logged_in = await client.expect("900")
    assert logged_in.params[2] == "admin"
    await client.expect("903")
    client.send("CAP END")
    assert (await client.expect("001")).params[0] == "admin"

    bad = await irc()
    bad.send("CAP REQ :sasl", "AUTHENTICATE PLAIN")
    await bad.expect("AUTHENTICATE")
    bad.send("AUTHENTICATE " + sasl_plain("admin", "wrong password"))
    rest = await bad.closed()
    assert [r.command for r in rest][-2:] == ["904", "ERROR"]


# -- rooms, with a native user beside -----------------------------------------------------------


async def test_irc_and_native_in_one_room(irc: Any) -> None:
    room, inick, nnick = unique("room"), unique("irc"), unique("nat")
    native = await irc.native(nnick)
    assert (await native.request({"type": "join", "room": room, "id": 1}))["type"] == "ok"
    await native.request({"type": "topic", "room": room, "text": "the topic", "id": 2})
    client = await irc(inick)
    lines = await client.join("#" + room)
    commands = [r.command for r in lines]
    assert commands == ["JOIN", "332", "353", "366"], commands
    assert lines[0].line.source == f"{inick}!{inick}@imchat"
    assert lines[1].params[-1] == "the topic"
    assert sorted(lines[2].params[-1].split()) == sorted([inick, nnick])
    joined = await native_event(native, "joined")
    assert joined["nick"] == inick

    # native -> IRC
    native.send({"type": "say", "room": room, "text": "hi from native", "id": 3})
    msg = await client.expect("PRIVMSG")
    assert msg.line.source.startswith(nnick + "!")
    assert msg.params == ["#" + room, "hi from native"]
    native.send({"type": "say", "room": room, "text": "waves", "kind": "action", "id": 4})
    assert (await client.expect("PRIVMSG")).params[1] == "\x01ACTION waves\x01"

    # IRC -> native
    client.send(f"PRIVMSG #{room} :hi from irc", f"PRIVMSG #{room} :\x01ACTION nods\x01")
    got = await native_event(native, "msg", **{"from": inick})
    assert (got["from"], got["text"]) == (inick, "hi from irc")
    got = await native_event(native, "msg", **{"from": inick})
    assert (got["text"], got["kind"]) == ("nods", "action")

    # topics both ways
    client.send(f"TOPIC #{room} :set from irc")
    assert (await native_event(native, "topic"))["topic"] == "set from irc"
    topic = await client.expect("TOPIC")
    assert topic.params == ["#" + room, "set from irc"]
    native.send({"type": "topic", "room": room, "text": "set natively", "id": 5})
    assert (await client.expect("TOPIC")).params[-1] == "set natively"
    client.send(f"TOPIC #{room}")
    assert (await client.expect("332")).params[-1] == "set natively"

    # another native joins and quits: JOIN, then PART with reason quit
    other = await irc.native(unique("nat"))
    await other.request({"type": "join", "room": room, "id": 1})
    assert (await client.expect("JOIN")).line.source.startswith(other_nick(client))
    await other.close()
    part = await client.expect("PART")
    assert part.params[-1] == "quit"

    # IRC parts
    client.send(f"PART #{room}")
    await client.expect("PART")
    parted = await native_event(native, "parted", nick=inick)
    assert "reason" not in parted


async def test_an_action_without_its_closing_delimiter_is_an_action(irc: Any) -> None:
    """The CTCP spec lets a client leave out the closing \\x01 of an ACTION: the message is
    still an action (it was refused as INVALID_TEXT for holding a control character)."""
    room, nnick = unique("act"), unique("nat")
    native = await irc.native(nnick)
    await native.request({"type": "join", "room": room, "id": 1})
    client = await irc(unique("irc"))
    await client.join("#" + room)
    client.send(f"PRIVMSG #{room} :\x01ACTION shrugs")
    got = await native_event(native, "msg", room=room)
    assert (got["text"], got.get("kind")) == ("shrugs", "action")


async def test_an_action_in_a_dm_is_refused_not_sent_as_plain_text(irc: Any) -> None:
    """imchat has actions in rooms only (as the TUI says to /me in a DM): an IRC /me in a
    query is refused with FAIL, and nothing is sent. It went out as a plain DM of the words,
    the sender's client showing "* irc waves" and the reader "irc: waves"."""
    nnick = unique("nat")
    native = await irc.native(nnick)
    client = await irc(unique("irc"))
    client.send(f"PRIVMSG {nnick} :\x01ACTION waves\x01", f"PRIVMSG {nnick} :plain words")
    fail = await client.expect("FAIL")
    assert fail.params[:3] == ["PRIVMSG", "INVALID_TEXT", nnick]
    got = await native_event(native, "dm")
    assert got["text"] == "plain words"


async def test_a_topic_with_newlines_cannot_inject_irc_lines(irc: Any) -> None:
    """A topic may hold newlines; on IRC it is one parameter of one line (332, TOPIC, 322).
    A newline in it would end the line there, and what follows would be read by IRC clients
    as a line of its own: a PRIVMSG forged from any nick, or a numeric from the server."""
    room, inick, nnick = unique("room"), unique("irc"), unique("nat")
    native = await irc.native(nnick)
    await native.request({"type": "join", "room": room, "id": 1})
    forged = f":admin!admin@imchat PRIVMSG #{room} :forged"
    set_topic = {"type": "topic", "room": room, "text": f"top\n\n{forged}", "id": 2}
    assert (await native.request(set_topic))["type"] == "ok"
    client = await irc(inick)
    lines = await client.join("#" + room)
    assert [r.command for r in lines] == ["JOIN", "332", "353", "366"]
    assert lines[1].params[-1] == f"top  {forged}"
    native.send({"type": "topic", "room": room, "text": f"again\n{forged}", "id": 3})
    assert (await client.expect("TOPIC")).params[-1] == f"again {forged}"
    client.send("LIST")
    listed = await client.expect(lambda r: r.command == "322" and r.params[1] == "#" + room)
    assert listed.params[-1] == f"again {forged}"
    await client.expect("323")
    assert not any(r.line.source and r.line.source.startswith("admin!") for r in client.seen)


def other_nick(client: IrcClient) -> str:
    """The source prefix of the last JOIN not by the client itself (for readability)."""
    joins = [r for r in client.seen if r.command == "JOIN"]
    return joins[-1].line.source.split("!")[0] if joins else ""


async def test_tags_echo_and_split(irc: Any) -> None:
    room, nick = unique("tags"), unique("tg")
    client = await irc(nick, caps="server-time message-tags echo-message")
    await client.join("#" + room)
    client.send(f"PRIVMSG #{room} :tagged")
    echo = await client.expect("PRIVMSG")
    assert echo.params == ["#" + room, "tagged"]
    assert echo.line.tags["msgid"] == "1"
    assert echo.line.tags["time"].endswith("Z") and "T" in echo.line.tags["time"]
    # a text longer than an IRC line leaves in several lines, each within 512 bytes
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    long = " ".join(f"word{i}" for i in range(500))
    native.send({"type": "say", "room": room, "text": long + "\nsecond line", "id": 2})
    pieces: list[Received] = []
    while not pieces or pieces[-1].params[-1] != "second line":
        pieces.append(await client.expect("PRIVMSG"))
    for piece in pieces:
        body = piece.raw.split(b" ", 1)[1]  # without the tags
        assert len(body) <= MAX_LINE
    assert " ".join(p.params[-1] for p in pieces[:-1]) == long
    assert {p.line.tags["msgid"] for p in pieces} == {"2"}


async def test_revision_3_as_irc_users_see_it(irc: Any) -> None:
    """Replies and reactions in their IRCv3 form with message-tags; edits, deletes (and
    reactions without tags) as text that says what happened."""
    room = unique("rev3")
    tagged = await irc(unique("tg"), caps="message-tags")
    plain = await irc(unique("pl"))
    for client in (tagged, plain):
        await client.join("#" + room)
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    first = await native.request({"type": "say", "room": room, "text": "ship it?", "id": 2})
    seq = first["seq"]
    await native.request({"type": "say", "room": room, "text": "yes", "reply_to": seq, "id": 3})
    await native.request({"type": "react", "room": room, "seq": seq, "emoji": "👍", "id": 4})
    await native.request({"type": "edit", "room": room, "seq": seq, "text": "ship it!", "id": 5})
    await native.request({"type": "delete", "room": room, "seq": seq, "id": 6})

    await tagged.expect("PRIVMSG")  # "ship it?"
    reply = await tagged.expect("PRIVMSG")
    assert reply.params[-1] == "yes" and reply.line.tags["+draft/reply"] == str(seq)
    react = await tagged.expect("TAGMSG")
    assert react.line.tags["+draft/react"] == "👍" and react.line.tags["+draft/reply"] == str(seq)
    edit = await tagged.expect("PRIVMSG")
    assert edit.params[-1] == f"(edited message {seq}) ship it!"
    deleted = await tagged.expect("NOTICE")
    assert deleted.params[-1] == f"(deleted message {seq})"

    texts = []
    while len(texts) < 5:
        got = await plain.expect(lambda r: r.command in ("PRIVMSG", "NOTICE"))
        texts.append(got.params[-1])
    assert texts == [
        "ship it?",
        "yes",
        f"(reacted 👍 to message {seq})",
        f"(edited message {seq}) ship it!",
        f"(deleted message {seq})",
    ]


async def test_irc_replies_and_reactions_reach_native_users(irc: Any) -> None:
    room = unique("rev3in")
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    first = await native.request({"type": "say", "room": room, "text": "lunch?", "id": 2})
    client = await irc(unique("ir"), caps="message-tags")
    await client.join("#" + room)
    seq = first["seq"]
    client.send(f"@+draft/reply={seq} PRIVMSG #{room} :yes please")
    reply = await native_event(native, "msg", text="yes please")
    assert reply["reply_to"] == seq
    client.send(f"@+draft/react=👍;+draft/reply={seq} TAGMSG #{room}")
    react = await native_event(native, "msg", target=seq)
    assert (react["kind"], react["text"]) == ("react", "👍")
    # A reaction to a message that is not there is refused as IRC users are told errors.
    client.send(f"@+draft/react=👍;+draft/reply=999 TAGMSG #{room}")
    refused = await client.expect("FAIL")
    assert refused.params[:3] == ["TAGMSG", "UNKNOWN_MSGID", "#" + room]


async def test_redact_deletes_both_ways(irc: Any) -> None:
    """draft/message-redaction: an IRC user's REDACT is a native delete, and a native delete
    reaches clients with the capability as REDACT (the others keep the notice)."""
    room = unique("redact")
    redacting = await irc(unique("rd"), caps="message-tags echo-message draft/message-redaction")
    plain = await irc(unique("pl"))
    for client in (redacting, plain):
        await client.join("#" + room)
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    redacting.send(f"PRIVMSG #{room} :oops, wrong window")
    mine = await native_event(native, "msg", text="oops, wrong window")
    redacting.send(f"REDACT #{room} {mine['seq']} :wrong window")
    deleted = await native_event(native, "msg", target=mine["seq"])
    assert deleted["kind"] == "delete"
    assert (deleted["target"], deleted["from"]) == (mine["seq"], mine["from"])
    gone = await redacting.expect("REDACT")
    assert gone.params == ["#" + room, str(mine["seq"])]
    assert (await plain.expect("NOTICE")).params[-1] == f"(deleted message {mine['seq']})"
    # Someone else's message: refused in the spec's terms, and nothing is stored.
    theirs = await native.request({"type": "say", "room": room, "text": "mine", "id": 2})
    redacting.send(f"REDACT #{room} {theirs['seq']}")
    refused = await redacting.expect("FAIL")
    assert refused.params[:3] == ["REDACT", "REDACT_FORBIDDEN", "#" + room]
    redacting.send(f"REDACT #{room} 99999", f"REDACT #{room} x1")
    for _ in range(2):
        unknown = await redacting.expect("FAIL")
        assert unknown.params[:2] == ["REDACT", "UNKNOWN_MSGID"]
    history = await native.request({"type": "history", "room": room, "id": 3})
    assert [m.get("kind") for m in history["messages"]] == [None, "delete", None]


async def test_no_echo_without_echo_message(irc: Any) -> None:
    room = unique("noecho")
    client = await irc(unique("ne"))
    await client.join("#" + room)
    client.send(f"PRIVMSG #{room} :not echoed", "PING :after")
    await client.expect("PONG")
    assert not any(r.command == "PRIVMSG" for r in client.seen)


async def test_what_the_user_says_elsewhere_reaches_an_irc_client_without_echo(
    irc: Any, running: Running
) -> None:
    """Without echo-message an IRC client is spared only the lines it sent itself: what its
    user says from another session (a native client of the same account) is news to it, in a
    room and in a DM; its own announcement does not come back to it (the client shows it)."""
    room, peer_nick = unique("elsewhere"), unique("peer")
    peer = await irc.native(peer_nick)
    client = await irc("admin", password="token:" + running.admin_token)
    await client.join("#" + room)
    native = await irc.native("admin", token=running.admin_token)
    await native.request({"type": "join", "room": room, "id": 1})
    await native.request({"type": "say", "room": room, "text": "said natively", "id": 2})
    await native.request({"type": "dm", "to": peer_nick, "text": "dm natively", "id": 3})
    said = await client.expect("PRIVMSG")
    assert (said.line.source, said.params) == (tr.source("admin"), ["#" + room, "said natively"])
    dm = await client.expect("PRIVMSG")
    assert dm.params == [peer_nick, "dm natively"]
    client.send(
        f"PRIVMSG #{room} :typed on irc",
        f"PRIVMSG {peer_nick} :dm typed on irc",
        "NOTICE $* :announced on irc",
        "PING :after",
    )
    assert (await native_event(native, "msg", text="typed on irc"))["from"] == "admin"
    assert (await native_event(peer, "dm", text="dm typed on irc"))["from"] == "admin"
    assert (await native_event(peer, "announce"))["text"] == "announced on irc"
    await client.expect("PONG")
    shown = [r.params[-1] for r in client.seen if r.command in ("PRIVMSG", "NOTICE")]
    assert shown == ["said natively", "dm natively"]
    # and a message of the native session's after those still arrives
    await native.request({"type": "say", "room": room, "text": "said natively again", "id": 4})
    assert (await client.expect("PRIVMSG")).params[-1] == "said natively again"


async def test_rooms_the_user_is_in_already_are_shown_joined_at_registration(
    irc: Any, running: Running
) -> None:
    """An account's IRC client that connects while another session of it is in rooms is shown
    those rooms as joined (JOIN, topic, NAMES) before anything said there. Their messages came
    to a channel the client never saw joined (irssi put them in its status window), and a JOIN
    then replayed history the client had already shown."""
    room, other_nick = unique("already"), unique("oth")
    native = await irc.native("admin", token=running.admin_token)
    await native.request({"type": "join", "room": room, "id": 1})
    await native.request({"type": "topic", "room": room, "text": "set before", "id": 2})
    other = await irc.native(other_nick)
    await other.request({"type": "join", "room": room, "id": 1})
    client = await irc("admin", password="token:" + running.admin_token)
    lines = await client.until("366")
    while lines[-1].params[1] != "#" + room:  # (rooms of an earlier test's admin session)
        lines = await client.until("366")
    assert [r.command for r in lines][-4:] == ["JOIN", "332", "353", "366"]
    join, topic, names = lines[-4:-1]
    assert (join.line.source, join.params) == (tr.source("admin"), ["#" + room])
    assert topic.params[1:] == ["#" + room, "set before"]
    assert sorted(names.params[-1].split()) == sorted(["admin", other_nick])
    await other.request({"type": "say", "room": room, "text": "said after", "id": 2})
    assert (await client.expect("PRIVMSG")).params == ["#" + room, "said after"]
    # a JOIN of the client's own is a repeated join: no second JOIN line, no replay
    again = await client.join("#" + room)
    assert [r.command for r in again] == ["332", "353", "366"]
    client.send("NAMES", "PING :after")
    await client.expect("PONG")
    assert sum(r.command == "PRIVMSG" for r in client.seen) == 1


async def test_join_replays_history_in_a_batch(irc: Any) -> None:
    room = unique("hist")
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    for i in range(3):
        await native.request({"type": "say", "room": room, "text": f"old {i}", "id": 10 + i})
    client = await irc(unique("late"), caps="server-time batch message-tags")
    await client.join("#" + room)
    start = await client.expect("BATCH")
    ref = start.params[0][1:]
    assert start.params[1:] == ["chathistory", "#" + room]
    lines = await client.until("BATCH")
    assert lines[-1].params == ["-" + ref]
    msgs = lines[:-1]
    assert [m.params[-1] for m in msgs] == ["old 0", "old 1", "old 2"]
    assert all(m.line.tags["batch"] == ref and "time" in m.line.tags for m in msgs)
    # joining again shows topic and names, but neither a second JOIN nor the history again
    again = await client.join("#" + room)
    assert [r.command for r in again] == ["353", "366"]
    # without server-time or batch, the time goes into the text
    plain = await irc(unique("plain"))
    await plain.join("#" + room)
    first = await plain.expect("PRIVMSG")
    assert first.params[-1].startswith("[20") and first.params[-1].endswith("] old 0")


async def test_chathistory(irc: Any) -> None:
    room = unique("ch")
    client = await irc(unique("ch"), caps="server-time batch message-tags draft/chathistory")
    lines = await client.join("#" + room)
    assert not any(r.command == "BATCH" for r in lines)
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    for i in range(1, 11):
        await native.request({"type": "say", "room": room, "text": f"m{i}", "id": i + 1})

    async def history(command: str) -> list[str]:
        client.send(command)
        start = await client.expect("BATCH")
        assert start.params[1] == "chathistory"
        return [r.params[-1] for r in (await client.until("BATCH"))[:-1]]

    assert await history(f"CHATHISTORY LATEST #{room} * 3") == ["m8", "m9", "m10"]
    assert await history(f"CHATHISTORY LATEST #{room} msgid=8 5") == ["m9", "m10"]
    assert await history(f"CHATHISTORY BEFORE #{room} msgid=5 2") == ["m3", "m4"]
    assert await history(f"CHATHISTORY AFTER #{room} msgid=5 2") == ["m6", "m7"]
    assert await history(f"CHATHISTORY BETWEEN #{room} msgid=7 msgid=3 10") == ["m4", "m5", "m6"]
    client.send(f"CHATHISTORY BEFORE #{room} timestamp=2000-01-01T00:00:00.000Z 5")
    await client.expect("BATCH")
    assert [r.command for r in await client.until("BATCH")] == ["BATCH"]
    assert await history(f"CHATHISTORY AFTER #{room} timestamp=2000-01-01T00:00:00.000Z 2") == [
        "m1",
        "m2",
    ]
    span = "timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z"
    client.send(f"CHATHISTORY TARGETS {span} 10")
    start = await client.expect("BATCH")
    assert start.params[1] == "draft/chathistory-targets"
    targets = (await client.until("BATCH"))[:-1]
    assert [t.params[1] for t in targets] == ["#" + room]
    client.send(f"CHATHISTORY AROUND #{room} msgid=3 2", "CHATHISTORY LATEST #nosuchroom0 * 5")
    assert (await client.expect("FAIL")).params[:2] == ["CHATHISTORY", "INVALID_PARAMS"]
    assert (await client.expect("FAIL")).params[:2] == ["CHATHISTORY", "INVALID_TARGET"]


# -- direct messages, announcements ---------------------------------------------------------------


async def test_dms_both_ways_and_offline_delivery(irc: Any, running: Running) -> None:
    nnick = unique("dmn")
    native = await irc.native(nnick)
    client = await irc()
    client.send("CAP REQ :sasl server-time", "NICK whoever", "USER u 0 * :u", "AUTHENTICATE PLAIN")
    await client.expect("AUTHENTICATE")
    client.send("AUTHENTICATE " + sasl_plain("admin", "token:" + running.admin_token))
    await client.expect("903")
    client.send("CAP END")
    await client.expect("001")
    client.send(f"PRIVMSG {nnick} :hello native")
    dm = await native_event(native, "dm")
    assert (dm["from"], dm["to"], dm["text"]) == ("admin", nnick, "hello native")
    native.send({"type": "dm", "to": "admin", "text": "hello irc", "id": 1})
    got = await client.expect("PRIVMSG")
    assert got.line.source.startswith(nnick + "!") and got.params == ["admin", "hello irc"]
    # offline: the account is away, a DM waits, and arrives after the next registration
    client.send("QUIT :bye")
    await client.closed()
    await native_event(native, "offline")
    native.send({"type": "dm", "to": "admin", "text": "while you were out", "id": 2})
    ok = await native.recv_skip()
    assert ok["type"] == "ok", ok
    again = await irc()
    token = "token:" + running.admin_token
    lines = await again.register("admin", caps="server-time", password=token)
    assert lines[0].command == "001"  # the DM comes after the welcome burst
    late = await again.expect("PRIVMSG")
    assert late.params == ["admin", "while you were out"] and "time" in late.line.tags
    client.send(f"PRIVMSG nosuchuser{next(_names)} :hi")


async def test_dm_to_unknown_nick(irc: Any) -> None:
    client = await irc(unique("dmu"))
    client.send("PRIVMSG nosuchuser0 :hi")
    assert (await client.expect("401")).params[1] == "nosuchuser0"


async def test_announcements(irc: Any, running: Running) -> None:
    admin = await irc()
    await admin.register("admin", password="token:" + running.admin_token)
    user = await irc(unique("ann"))
    native = await irc.native(unique("nat"))
    admin.send("NOTICE $* :maintenance at noon")
    notice = await user.expect("NOTICE")
    assert notice.params == ["$*", "maintenance at noon"]
    assert (await native_event(native, "announce"))["text"] == "maintenance at noon"
    user.send("NOTICE $* :me too")
    assert (await user.expect("481")).params[-1] == "only admins may announce"


# -- other commands --------------------------------------------------------------------------


async def test_who_and_names_of_many_channels_list_their_members(irc: Any) -> None:
    """WHO and NAMES list the members of every channel asked, however many (irssi sends a WHO
    per channel after joining them). They asked the hub with a native ``join``, which counts
    against the message rate limit: after a JOIN of 30 channels, the 11th WHO on listed none.
    20 channels: as many new rooms as a guest may create at once (--guest-rooms-burst)."""
    nick = unique("many")
    client = await irc(nick)
    rooms = [unique("many") for _ in range(20)]
    client.send("JOIN " + ",".join("#" + room for room in rooms))
    for _ in rooms:
        await client.expect("366")
    client.send(*[f"WHO #{room}" for room in rooms], *[f"NAMES #{room}" for room in rooms])
    for room in rooms:
        who = await client.until("315")
        assert [r.params[1:3] for r in who if r.command == "352"] == [["#" + room, nick]]
    for room in rooms:
        names = await client.until("366")
        assert [r.params[2:] for r in names if r.command == "353"] == [["#" + room, nick]]
    # and the message bucket is whole enough to speak at once
    client.send(f"PRIVMSG #{rooms[0]} :still allowed", "PING :after")
    await client.expect("PONG")
    assert not any(r.command == "FAIL" for r in client.seen)


async def test_list_names_who_whois_mode_away_ping(irc: Any) -> None:
    room, nick = unique("misc"), unique("misc")
    client = await irc(nick)
    await client.join("#" + room)
    client.send("LIST")
    lines = await client.until("323")
    assert lines[0].command == "321"
    assert any(r.command == "322" and r.params[1] == "#" + room for r in lines)
    client.send(f"NAMES #{room}")
    assert (await client.expect("353")).params[-1] == nick
    await client.expect("366")
    client.send(f"WHO #{room}")
    who = await client.expect("352")
    assert who.params[1:3] == ["#" + room, nick]
    await client.expect("315")
    client.send(f"WHOIS {nick}")
    assert (await client.expect("311")).params[1] == nick
    assert (await client.expect("319")).params[-1] == "#" + room
    await client.expect("318")
    client.send("WHOIS nobody0")
    await client.expect("401")
    await client.expect("318")
    client.send(f"MODE #{room}", f"MODE #{room} b", f"MODE #{room} +o x", f"MODE {nick}")
    assert (await client.expect("324")).params[-1] == "+nt"
    await client.expect("368")
    await client.expect("482")
    assert (await client.expect("221")).params[-1] == "+i"
    client.send("AWAY :lunch", "AWAY")
    await client.expect("306")
    await client.expect("305")
    client.send("PING :tok")
    assert (await client.expect("PONG")).params[-1] == "tok"
    client.send("FROBNICATE x")
    assert (await client.expect("421")).params[1] == "FROBNICATE"
    client.send("PART #neverjoined0")
    assert (await client.expect("442")).params[1] == "#neverjoined0"
    outsider = await irc(unique("out"))
    outsider.send(f"TOPIC #{room}", "TOPIC #nosuchroom0")
    assert (await outsider.expect("331")).params[1] == "#" + room
    assert (await outsider.expect("403")).params[1] == "#nosuchroom0"
    client.send("JOIN nohash")
    assert (await client.expect("403")).params[1] == "nohash"
    client.send("JOIN #Bad!Name")
    assert (await client.expect("403")).params[1] == "#Bad!Name"


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input(irc: Any) -> None:
    room = unique("bad")
    client = await irc(unique("bad"))
    await client.join("#" + room)
    client.send(b"PRIVMSG #" + room.encode() + b" :\xff\xfe broken")
    fail = await client.expect("FAIL")
    assert fail.params[1] == "INVALID_UTF8"
    client.send(f"PRIVMSG #{room} :" + "x" * 600)
    assert (await client.expect("417")).params[-1] == "input line too long"
    client.send(f"PRIVMSG #{room} :\x02bold\x02")
    fail = await client.expect("FAIL")
    assert fail.params[:3] == ["PRIVMSG", "INVALID_TEXT", "#" + room]
    client.send(f"PRIVMSG #{room}", "PRIVMSG")
    await client.expect("412")
    await client.expect("411")
    client.send(f"PRIVMSG #notjoined{next(_names)} :hi")
    assert (await client.expect("404")).params[-1].startswith("you are not in")
    # a target that cannot be a nick is no such nick (401), not a bad NICK command (432)
    client.send("PRIVMSG 9lives :hi", "NOTICE bad.nick :hi")
    assert (await client.expect(lambda r: r.command in ("401", "432"))).params[1] == "9lives"
    assert (await client.expect(lambda r: r.command in ("401", "432"))).command == "401"
    assert not any(r.command == "432" for r in client.seen)
    # a line without LF that grows past the limit is cut off and the session goes on
    client.send(b"PRIVMSG #" + room.encode() + b" :" + b"y" * 9000)
    await client.expect("417")
    client.send("PING :still-here")
    assert (await client.expect("PONG")).params[-1] == "still-here"


async def test_flood_is_rate_limited(irc: Any) -> None:
    room = unique("flood")
    client = await irc(unique("fl"))
    await client.join("#" + room)
    client.send(*[f"PRIVMSG #{room} :m{i}" for i in range(80)])
    fail = await client.expect("FAIL")
    assert fail.params[:2] == ["PRIVMSG", "RATE_LIMITED"]


async def test_quit_closes_and_parts(irc: Any) -> None:
    room, nick = unique("quit"), unique("q")
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    client = await irc(nick)
    await client.join("#" + room)
    await native_event(native, "joined")
    client.send("QUIT :gone fishing")
    rest = await client.closed()
    assert rest[-1].command == "ERROR"
    parted = await native_event(native, "parted")
    assert (parted["nick"], parted["reason"]) == (nick, "quit")


async def test_server_shutdown_sends_error(tmp_path: Path) -> None:
    import signal

    (tmp_path / "d").mkdir()
    proc = ServerProcess(tmp_path / "d", "--irc-port", "0", env=subprocess_env())
    proc.start()
    try:
        match = IRC_AT.search(proc.output)
        assert match
        client = await IrcClient.open(int(match.group(2)))
        await client.register("stayer")
        proc.kill(signal.SIGTERM)
        rest = await client.closed()
        assert rest[-1].command == "ERROR" and "shutting down" in rest[-1].params[-1]
        assert await asyncio.to_thread(proc.wait) == 0
        await client.close()
    finally:
        proc.cleanup()


async def test_irc_guest_reconnects_with_its_nick(irc: Any) -> None:
    """An IRC guest cannot resume (no ``resume`` secret in IRC), so its identity must end
    with its connection: reconnecting with the same nick works at once. With revision 2's
    guest holds this needs the hub to honour ``IrcSession.guest_hold`` (docs/irc.md)."""
    nick, room = unique("back"), unique("back")
    observer = await irc.native(unique("obs"))
    await observer.request({"type": "join", "room": room, "id": 1})
    first = await irc(nick)
    await first.join("#" + room)
    first.send("QUIT :brb")
    await first.closed()
    await native_event(observer, "parted", nick=nick)  # the server has seen it leave
    again = await irc()
    again.send(f"NICK {nick}", "USER u 0 * :u")
    got = await again.expect(lambda r: r.command in ("001", "433"))
    assert got.command == "001", got.raw


async def test_reaction_notices_show_bidi_and_line_breaks_inert(irc: Any) -> None:
    """A reaction notice puts the user's emoji inside the server's words: a bidi override in
    it would reverse "to message N)" on the reader's screen, a newline would cut the notice
    in two. Both reach plain clients as visible escapes / spaces, through one function."""
    room = unique("bidi")
    plain = await irc(unique("pl"))
    await plain.join("#" + room)
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    first = await native.request({"type": "say", "room": room, "text": "pick one", "id": 2})
    seq = first["seq"]
    for i, emoji in enumerate(["\u202e👍", "\u2067ok\u2069\n\t!"]):
        await native.request(
            {"type": "react", "room": room, "seq": seq, "emoji": emoji, "id": 10 + i}
        )
    await native.request(
        {"type": "react", "room": room, "seq": seq, "emoji": "\u202e👍", "remove": True, "id": 20}
    )
    await plain.expect("PRIVMSG")
    notices = [(await plain.expect("NOTICE")).params[-1] for _ in range(3)]
    assert notices == [
        f"(reacted \\u202e👍 to message {seq})",
        f"(reacted \\u2067ok\\u2069  ! to message {seq})",
        f"(took back \\u202e👍 from message {seq})",
    ]


async def test_join_of_the_same_channel_twice_in_one_command(irc: Any) -> None:
    """``JOIN #a,#A`` joins once, as IRC servers do: one JOIN, one topic, one NAMES."""
    room = unique("twice")
    client = await irc(unique("tw"))
    client.send(f"JOIN #{room},#{room.upper()},#{room}", "PING :after")
    lines = await client.until("PONG")
    commands = [r.command for r in lines if r.command != "PONG"]
    assert commands == ["JOIN", "353", "366"], commands


async def test_a_bad_reply_tag_is_refused(irc: Any) -> None:
    """A ``+draft/reply`` that names no message of ours (malformed, or unknown) is refused
    with ``FAIL <command> UNKNOWN_MSGID``, as REDACT refuses such a msgid, and nothing is
    sent: the message is not posted as if it answered nothing."""
    room = unique("badreply")
    native = await irc.native(unique("nat"))
    await native.request({"type": "join", "room": room, "id": 1})
    client = await irc(unique("br"), caps="message-tags")
    await client.join("#" + room)
    for value in ("abc", "-1", "1" * 25, "99999", ""):
        tag = f"+draft/reply={value}" if value else "+draft/reply"
        client.send(f"@{tag} PRIVMSG #{room} :meant as a reply")
        refused = await client.expect("FAIL")
        assert refused.params[:3] == ["PRIVMSG", "UNKNOWN_MSGID", "#" + room], refused.raw
        client.send(f"@+draft/react=👍;{tag} TAGMSG #{room}")
        refused = await client.expect("FAIL")
        assert refused.params[:3] == ["TAGMSG", "UNKNOWN_MSGID", "#" + room], refused.raw
    before = len(client.seen)
    client.send(f"PRIVMSG #{room} :plain", "PING :after")
    await client.expect("PONG")
    assert [r.command for r in client.seen[before:]] == ["PONG"]
    # The refused ones were not posted: the first message the native user gets is this one.
    got = await native_event(native, "msg")
    assert (got["text"], got.get("reply_to"), got.get("kind")) == ("plain", None, None)


async def test_an_autojoin_past_the_rate_limit_burst_joins_every_channel(
    irc: Any, running: Running
) -> None:
    """IRC clients autojoin in one burst and never retry: a JOIN past the message bucket
    waits for it (fake lag, as IRC servers do) instead of failing. An account, so the
    room-creation budget of guests is not what is tested; 45 channels, 5 past the burst."""
    client = await irc("admin", password="token:" + running.admin_token)
    rooms = [unique("auto") for _ in range(45)]
    client.send("JOIN " + ",".join("#" + room for room in rooms))
    for room in rooms:
        names = await client.until("366", timeout=20)
        assert names[-1].params[1] == "#" + room
    assert not any(r.command == "FAIL" for r in client.seen)
    client.send("JOIN 0", "PING :parted")  # the admin account leaves them for other tests
    await client.expect("PONG")
