"""Unit tests of the text rendering rules (no app needed)."""

from __future__ import annotations

from rich.console import Console

from imchat.client.session import ConvKey, Gap
from imchat.tui.render import Formatter, clean, mentions, nick_style


def render(text: object) -> str:
    console = Console(width=200, color_system="truecolor", force_terminal=True)
    with console.capture() as capture:
        console.print(text)
    return capture.get()


def test_clean_makes_controls_visible_and_keeps_newlines() -> None:
    assert clean("a\x1b[31mb\rc\x07\x7f\x9b\u202eend\nnext\tx") == (
        "a␛[31mb␍c␇\u2421\\u009b\\u202eend\nnext    x"
    )


def test_nick_colour_is_stable_and_case_insensitive() -> None:
    assert nick_style("Alice") == nick_style("alice")
    assert len({nick_style(n).color for n in ("alice", "bob", "carol", "dave", "erin")}) > 1


def test_mentions_match_whole_nicks_only() -> None:
    assert mentions("alice: ping", "alice")
    assert mentions("hey ALICE!", "alice")
    assert not mentions("malice aforethought", "alice")
    assert not mentions("alice_2 is here", "alice")
    assert mentions("[x] look", "[x]")


def test_markup_and_escapes_in_messages_reach_the_terminal_as_text() -> None:
    fmt = Formatter("me", lambda ts: "12:00")
    entry = fmt.message(
        {
            "type": "msg",
            "room": "r",
            "seq": 1,
            "ts": 0,
            "from": "[blink]x",
            "text": "[bold red]hi[/] \x1b[2J",
        }
    )
    out = render(entry.prefix + entry.body)
    assert "[blink]x" in out and "[bold red]hi[/] ␛[2J" in out
    assert "\x1b[2J" not in out  # the only escapes are the ones Rich adds for our styles
    assert "\x1b[5m" not in out  # no blink


def test_gap_entry_says_how_many() -> None:
    fmt = Formatter("me")
    assert "1 message missed" in fmt.gap(Gap(ConvKey.room("r"), 4, 6)).body.plain
    assert "99 messages missed" in fmt.gap(Gap(ConvKey.room("r"), 1, 101)).body.plain
