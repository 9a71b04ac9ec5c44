"""Defects found trying the merged client as a user (tmux), each pinned by a Pilot test."""

from __future__ import annotations

from imchat.client.session import ConvKey
from imchat.tui.widgets import MemberList

from .conftest import ServerHandle, make_app, running, until

LOBBY = ConvKey.room("lobby")


def online_marks(app: object) -> dict[str, bool]:
    """Each member of the list, and whether it is drawn as online (●)."""
    members = app.query_one(MemberList)  # type: ignore[attr-defined]
    out: dict[str, bool] = {}
    for index, nick in enumerate(members.nicks):
        prompt = members.get_option_at_index(index).prompt
        out[nick] = str(prompt).startswith("●")
    return out


async def test_a_room_mate_who_came_online_later_is_shown_online(server: ServerHandle) -> None:
    # Presence is scoped (protocol rev 2): bob's "online" reaches only those sharing a room
    # with him when he connects, so alice hears of him first through his "joined".
    alice = make_app(server, "alice")
    async with running(alice) as pa:
        await until(pa, lambda: online_marks(alice) == {"alice": True}, "alone")
        bob = make_app(server, "bob")
        async with running(bob):
            await until(pa, lambda: "bob" in online_marks(alice), "bob in the member list")
            assert online_marks(alice) == {"alice": True, "bob": True}
        await until(pa, lambda: "bob" not in online_marks(alice), "bob quit (parted)")
