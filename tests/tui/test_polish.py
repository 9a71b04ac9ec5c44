"""Defects found trying the merged client as a user (tmux), each pinned by a Pilot test."""

from __future__ import annotations

import pytest
from textual import events
from textual.containers import Vertical
from textual.widgets import OptionList

from imchat.client.session import ConvKey
from imchat.tui.widgets import MemberList, SearchBar
from imchat.tui.widgets.pickers import PickerScreen

from .conftest import ServerHandle, has_line, log_text, make_app, running, until
from .test_app import client
from .test_features_tui import submit
from .test_live import burst

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


@pytest.mark.parametrize("size", [(80, 24), (40, 15)])
async def test_a_message_picker_fits_a_small_terminal(
    server: ServerHandle, size: tuple[int, int]
) -> None:
    # At 80x24 the picker's 30 messages were taller than its dialog: the newest ones, where
    # the highlight starts, were cut off below the screen.
    alice = make_app(server, "alice")
    async with alice.run_test(size=size) as pilot:
        await until(pilot, lambda: alice.session.state.value == "connected", "connect")
        for n in range(35):
            alice.session.say("lobby", f"line {n}")
        await until(pilot, lambda: has_line(alice, LOBBY, "alice line 34"), "35 lines")
        await submit(pilot, "/reply")
        await until(pilot, lambda: isinstance(alice.screen, PickerScreen), "picker")
        await pilot.pause()
        dialog = alice.screen.query_one(Vertical)
        choices = alice.screen.query_one(OptionList)
        assert choices.highlighted == choices.option_count - 1
        assert dialog.region.bottom <= size[1]
        assert choices.region.bottom <= dialog.content_region.bottom
        # The highlighted (newest) option is drawn.
        highlighted = choices.get_option_at_index(choices.option_count - 1).prompt
        assert "line 34" in str(highlighted)
        assert "line 34" in "\n".join(
            choices.render_line(y).text for y in range(choices.content_region.height)
        )
        await pilot.press("escape")
        await alice.session.close()


async def test_the_reaction_picker_starts_on_the_first_emoji_without_glue(
    server: ServerHandle,
) -> None:
    # It started on the last (❌): Enter without looking reacted ❌. And "❤️" (with VS16),
    # drawn two cells wide by tmux but measured one by Rich, shifted the dialog's border.
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        alice.session.say("lobby", "react to me")
        await until(pilot, lambda: has_line(alice, LOBBY, "react to me"), "message")
        await submit(pilot, "/react")
        await until(pilot, lambda: isinstance(alice.screen, PickerScreen), "message picker")
        await pilot.press("enter")
        await until(
            pilot,
            lambda: (
                isinstance(alice.screen, PickerScreen) and "reaction" in alice.screen.title_text
            ),
            "emoji picker",
        )
        choices = alice.screen.query_one(OptionList)
        assert choices.highlighted == 0
        labels = [str(choices.get_option_at_index(i).prompt) for i in range(choices.option_count)]
        assert "\ufe0f" not in "".join(labels)
        await pilot.press("enter")
        await until(
            pilot,
            lambda: "👍 1" in next((x for x in log_text(alice, LOBBY) if "react to me" in x), ""),
            "👍 reaction",
        )


async def test_the_search_bar_keeps_the_order_of_keys_in_one_burst(server: ServerHandle) -> None:
    # tmux send-keys BSpace BSpace BSpace "199": the bar ran Backspace as a binding after
    # the digits were typed, so the digits were deleted again and the query did not change.
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        await pilot.press("ctrl+f")
        bar = alice.query_one(SearchBar)
        await until(pilot, lambda: alice.focused is bar, "search bar focused")
        burst(alice, *"flood 150")
        await until(pilot, lambda: bar.value == "flood 150", "typed")
        burst(alice, "backspace", "backspace", "backspace", "1", "9", "9")
        await until(pilot, lambda: bar.value == "flood 199", "edited in order", timeout=3)
        burst(alice, "left", "left", "left", "backspace", "2", "end", "0")
        await until(pilot, lambda: bar.value == "flood21990", "cursor keys in order", timeout=3)


async def test_history_under_the_motd_gets_one_day_separator(server: ServerHandle) -> None:
    # The message of the day went above "You joined" undated; the history prepended above
    # both then brought its own "today" separator, and "today" showed twice.
    await server.stop()
    await server.start(motd="be kind")
    bob = make_app(server, "bob")
    async with running(bob) as pb:
        bob.session.say("lobby", "said before alice came")
        await until(pb, lambda: has_line(bob, LOBBY, "said before alice came"), "said")
        alice = make_app(server, "alice")
        async with running(alice) as pa:
            await until(pa, lambda: has_line(alice, LOBBY, "said before alice came"), "history")
            await until(pa, lambda: has_line(alice, LOBBY, "be kind"), "motd")
            entries = alice.views[LOBBY].log_widget.entries
            separators = [e for e in entries if e.meta.get("separator")]
            assert len(separators) == 1, [e.prefix.plain + e.body.plain for e in entries]
            assert entries[0] is separators[0]


async def test_n_new_counts_messages_not_the_read_marker(server: ServerHandle) -> None:
    # Scrolled up with the terminal unfocused, one message arrived: the read marker line
    # went above it and "2 new" was shown for one message.
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        for n in range(60):
            alice.session.say("lobby", f"filler {n}")
        await until(pilot, lambda: has_line(alice, LOBBY, "filler 59"), "filled")
        lg = alice.views[LOBBY].log_widget
        await until(pilot, lambda: lg.scroll_y == lg.max_scroll_y > 0, "at the bottom")
        await pilot.press("pageup")
        await until(pilot, lambda: not lg.following, "scrolled up")
        alice.post_message(events.AppBlur())
        await until(pilot, lambda: not alice.app_focus, "terminal unfocused")
        async with client(server, "bob", rooms=("lobby",)) as bob:
            await until(pilot, lambda: has_line(alice, LOBBY, "bob joined"), "bob joined")
            unseen = lg.unseen
            await bob.request("say", room="lobby", text="one new message")
            await until(pilot, lambda: has_line(alice, LOBBY, "one new message"), "message")
            assert any(e.meta.get("read_marker") for e in lg.entries)
            assert lg.unseen == unseen + 1


async def test_a_folded_line_is_redrawn_before_anything_goes_below_it(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folded join/part line is redrawn on a timer during a storm; a message arriving
    # first must not sit below a line that still shows an older state (and grows later).
    monkeypatch.setattr("imchat.tui.app.FOLD_REDRAW", 3600.0)
    alice = make_app(server, "alice")
    async with running(alice) as pilot, client(server, "bob", rooms=("lobby",)) as bob:
        await until(pilot, lambda: has_line(alice, LOBBY, "bob joined #lobby"), "bob")
        async with client(server, "carol", rooms=("lobby",)):
            await until(pilot, lambda: "carol" in online_marks(alice), "carol joined")
            await bob.request("say", room="lobby", text="after the joins")
            await until(pilot, lambda: has_line(alice, LOBBY, "after the joins"), "said")
            lines = log_text(alice, LOBBY)
            assert "2 joined #lobby: bob, carol" in lines[-2], lines[-3:]
