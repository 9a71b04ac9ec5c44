"""Folded presence lines and dated stamps: pure functions, no app."""

from __future__ import annotations

import time

from imchat.tui.fold import PresenceFold
from imchat.tui.render import Formatter, clean, fit_nick


def test_joins_and_parts_in_a_row_fold_into_one_line() -> None:
    fold = PresenceFold("lobby")
    fold.add("joined", "bob")
    assert fold.text().plain == "bob joined #lobby"
    for n in range(11):
        fold.add("joined", f"u{n}")
    for nick in ("x", "y", "z"):
        fold.add("parted", nick)
    fold.add("parted", "u0")
    assert fold.text().plain == (
        "11 joined, 3 left, 1 joined and left #lobby: bob, u1, u2, u3, u4, u5 and 5 more"
        " · x, y, z · u0"
    )
    fold.add("joined", "x")  # came back: joined, not left
    assert "x" not in [*fold.left.values()] and "x" in fold.joined.values()
    assert fold.forget_join("bob") and not fold.forget_join("bob")


def test_a_fold_of_nothing_is_empty() -> None:
    fold = PresenceFold("lobby")
    assert fold.empty
    fold.add("joined", "bob")
    fold.forget_join("bob")
    assert fold.empty


def test_long_nicks_are_cut_to_the_nick_column() -> None:
    assert fit_nick("bob") == " " * 9 + "bob"
    assert fit_nick("n" * 32) == "n" * 11 + "…"


def test_lines_of_an_earlier_day_carry_their_date() -> None:
    def utc_date(ts: float) -> str:
        return time.strftime("%d %b", time.gmtime(ts))

    def utc_time(ts: float) -> str:
        return time.strftime("%H:%M", time.gmtime(ts))

    now = 1_700_000_000.0  # 14 Nov 2023 22:13 UTC
    fmt = Formatter("alice", utc_time, date_format=utc_date, clock=lambda: now)
    today = fmt.message({"type": "msg", "from": "bob", "text": "hi", "ts": now - 60})
    older = fmt.message({"type": "msg", "from": "bob", "text": "hi", "ts": now - 86400})
    assert today.prefix.plain.startswith("22:12 ")
    assert older.prefix.plain.startswith("13 Nov 22:13 ")
    assert fmt.day_separator("14 Nov").body.plain == "─── today ───"
    assert fmt.day_separator("13 Nov").body.plain == "─── 13 Nov ───"
    assert fmt.system(None, "You joined #lobby").prefix.plain.startswith("22:13 ")


def test_emoji_glue_is_left_out_of_what_is_drawn() -> None:
    assert clean("👨\u200d👩\u200d👧 👍🏽 ❤\ufe0f") == "👨👩👧 👍 ❤"
    # A joiner between letters (Indic scripts) is kept.
    assert clean("क्\u200dष") == "क्\u200dष"


def test_a_joiner_before_a_wide_character_or_an_emoji_is_left_out() -> None:
    """tmux 3.3 draws the character after a joiner inside the cell before it: ``a‍👍`` took
    one cell (Rich counts three), the emoji hidden and the row's border moved. A joiner
    that no emoji or wide character follows (Indic scripts) changes no width and is kept."""
    assert clean("a\u200d👍 b") == "a👍 b"
    assert clean("\u200d👍") == "👍"
    assert clean("x\u200d\u200d中") == "x中"
    assert clean("x\u200d❤y") == "x❤y"
    assert clean("x\u200d\u200dy") == "x\u200d\u200dy"
    assert clean("क्\u200dष\u200d") == "क्\u200dष\u200d"
