"""A bracketed paste holding an escape character arrives as one paste, in order.

Textual's input parser starts reading an escape sequence at every ESC, also inside a
bracketed paste: the characters after it (``[31mred…``) were re-issued as *key presses*,
typed into the input before the paste itself (which came last), so pasting coloured log
output scrambled the message. ``run_tui`` installs imchat's parser in Textual's drivers.
"""

from __future__ import annotations

from textual import events
from textual.drivers import linux_driver

from imchat.tui.paste_parser import install, paste_text


def _tokens(*chunks: str) -> list[object]:
    install()
    parser = linux_driver.XTermParser()
    tokens: list[object] = []
    for chunk in chunks:
        tokens.extend(parser.feed(chunk))
    return tokens


def _pastes_and_keys(tokens: list[object]) -> tuple[list[str], list[str]]:
    pastes = [t.text for t in tokens if isinstance(t, events.Paste)]
    keys = [t.key for t in tokens if isinstance(t, events.Key)]
    return pastes, keys


PASTE = "\x1b[200~esc \x1b[31mred\x1b[0m done\x1b[201~"


def test_escape_inside_a_paste_stays_in_the_paste_in_order() -> None:
    pastes, keys = _pastes_and_keys(_tokens(PASTE))
    assert keys == []
    assert pastes == ["esc \u241b[31mred\u241b[0m done"]


def test_paste_split_across_reads_anywhere() -> None:
    for cut in range(1, len(PASTE)):
        pastes, keys = _pastes_and_keys(_tokens(PASTE[:cut], PASTE[cut:]))
        assert (pastes, keys) == (["esc \u241b[31mred\u241b[0m done"], []), cut


def test_keys_around_a_paste_are_keys() -> None:
    pastes, keys = _pastes_and_keys(_tokens("a\x1b[200~x\x1b[201~b"))
    assert pastes == ["x"]
    assert keys == ["a", "b"]


def test_line_endings_of_a_paste() -> None:
    """LF, CRLF and CR line endings are one newline each. A terminal that turns each LF of
    a paste into CR (tmux's paste-buffer, some others) makes a CRLF text ``a\\r\\rb``: when
    every line break of a paste is such a pair, each pair is one newline (it doubled every
    line break and blank line)."""
    assert paste_text("a\r\n\r\nb\r\nc") == "a\n\nb\nc"
    assert paste_text("a\rb\r\rc") == "a\nb\n\nc"
    assert paste_text("a\nb\n\nc") == "a\nb\n\nc"
    # tmux pasting a CRLF text: every break is a CR pair.
    assert paste_text("a\r\r\r\rb\r\rc\r\r") == "a\n\nb\nc\n"
    assert paste_text("one line") == "one line"
