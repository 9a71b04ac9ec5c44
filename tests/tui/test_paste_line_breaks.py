"""A paste's trailing line break is not a line of the message: no empty row in the input, no
blank line sent at its end, no empty message, none leading the next one.

Copying a line from a terminal or an editor takes its line break along. Pilot against a real
in-process server; waits on conditions, never sleeps.
"""

from __future__ import annotations

from imchat.tui.screens import Confirm
from imchat.tui.widgets.chat_input import trim_trailing_breaks

from .conftest import ServerHandle, make_app, running, until
from .test_live import burst, chat_input, listener, paste, settle


async def test_a_bracketed_paste_drops_its_trailing_line_breaks(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        box = chat_input(alice)
        # LF, CRLF, a terminal's CR, tmux's CR pair, several: the input holds one row.
        for pasted in ("one line\n", "one line\r\n", "one line\r", "one line\r\r", "one line\n\n"):
            paste(alice, pasted)
            await until(pilot, lambda: "one line" in box.value, f"pasted {pasted!r}")
            await pilot.pause()
            assert (box.value, box.document.line_count) == ("one line", 1), pasted
            box.clear()
        paste(alice, "one line\n")
        await until(pilot, lambda: box.value == "one line", "pasted")
        await pilot.press("enter")
        await settle(pilot, texts, 1)
        assert texts == ["one line"]
        assert box.value == ""
        # Inner line breaks and blank lines stay; only the end is trimmed.
        paste(alice, "two\n\nlines  \n")
        await until(pilot, lambda: box.value == "two\n\nlines  ", "kept inside")
        await pilot.press("enter")
        await settle(pilot, texts, 2)
        assert texts == ["one line", "two\n\nlines  "]


async def test_a_paste_of_only_line_breaks_adds_nothing(server: ServerHandle) -> None:
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        box = chat_input(alice)
        box.value = "typed"
        paste(alice, "\n")
        paste(alice, "\r\n\r\n")
        paste(alice, "!")
        await until(pilot, lambda: box.value.endswith("!"), "the last paste")
        assert (box.value, box.document.line_count) == ("typed!", 1)


async def test_five_lines_and_their_line_break_do_not_ask(server: ServerHandle) -> None:
    """The confirmation counts the lines pasted, not the empty one after the last break."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot:
        five = "\n".join(f"line {n}" for n in range(1, 6))
        paste(alice, five + "\n")
        await until(pilot, lambda: chat_input(alice).value == five, "five lines in the input")
        assert not isinstance(alice.screen, Confirm)
        paste(alice, "\n".join(f"row {n}" for n in range(6)) + "\n")
        await until(pilot, lambda: isinstance(alice.screen, Confirm), "six lines ask")
        assert "6 lines" in alice.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await until(pilot, lambda: chat_input(alice).value.endswith("row 5"), "inserted")
        assert not chat_input(alice).value.endswith("\n")


async def test_a_crlf_paste_without_bracketed_paste_sends_each_line_once(
    server: ServerHandle,
) -> None:
    """Without bracketed paste a CRLF text arrives as keys: Enter, then Ctrl+J (the LF). The
    Ctrl+J must not leave an empty row in the emptied input, to lead the next line."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        burst(alice, *"first", "enter", "ctrl+j", *"second", "enter", "ctrl+j")
        await settle(pilot, texts, 2)
        assert texts == ["first", "second"]
        assert (chat_input(alice).value, chat_input(alice).document.line_count) == ("", 1)


async def test_a_message_is_sent_without_the_line_breaks_ending_it(server: ServerHandle) -> None:
    """Shift+Enter (or Ctrl+J) before Enter: the message has no blank last row."""
    alice = make_app(server, "alice")
    async with running(alice) as pilot, listener(server) as texts:
        burst(alice, *"hi", "ctrl+j", "ctrl+j", "enter")
        await settle(pilot, texts, 1)
        burst(alice, "ctrl+j", "enter")  # only a line break: nothing is sent
        burst(alice, *"ok", "enter")
        await settle(pilot, texts, 2)
        assert texts == ["hi", "ok"]


def test_trim_trailing_breaks() -> None:
    cases = {
        "a\n": "a",
        "a  \n": "a  ",  # the last line's own spaces stay
        "a\n \n\t": "a",  # blank last lines go with the breaks
        "a\n\nb": "a\n\nb",
        "\n\n": "",
        "a\t": "a\t",
        "": "",
    }
    for text, want in cases.items():
        assert trim_trailing_breaks(text) == want, text
    # Linear: a paste of many blank lines before its text is not a long wait.
    many = "\n" * 200_000 + "x"
    assert trim_trailing_breaks(many) is many
    assert trim_trailing_breaks("x" + "\n \t" * 200_000) == "x"
