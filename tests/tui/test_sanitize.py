"""Network text inside escape sequences: notifications, the window title and OSC 8 links."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from imchat.client.session import ConvKey
from imchat.tui.links import find_urls, linkify, safe_url
from imchat.tui.notify import (
    BEL,
    QUIET,
    TITLE_POP,
    TITLE_PUSH,
    Notifier,
    NotifySettings,
    osc9,
    osc777,
    osc_safe,
    osc_title,
)

HOSTILE = "bob\x1b]2;pwned\x07\x1b\\\x9c\x9d;evil\r\n\u202etxt\x00"

# An OSC string runs from "ESC ]" to the first BEL, ESC \ or C1 ST; inside it we allow no
# control character at all.
_OSC = re.compile(r"\x1b\](.*?)(?:\x07|\x1b\\|\x9c)", re.S)


def osc_bodies(out: str) -> list[str]:
    return _OSC.findall(out)


def test_osc_safe_removes_every_terminator_and_control() -> None:
    safe = osc_safe(HOSTILE)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e;]", safe)
    assert "pwned" in safe and "evil" in safe  # the text stays readable


@given(st.text())
def test_any_text_yields_exactly_one_well_formed_sequence(text: str) -> None:
    for out, fields in ((osc777(text, text), 4), (osc9(text), 2), (osc_title(text), 2)):
        assert out.startswith("\x1b]") and out.endswith("\x1b\\")
        body = out[2:-2]
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", body)
        assert len(body.split(";")) == fields  # nobody can add or forge a field


def test_notification_text_is_truncated() -> None:
    assert len(osc_safe("x" * 5000)) == 200


def test_notifier_writes_bell_and_one_desktop_form() -> None:
    written: list[str] = []
    notifier = Notifier(NotifySettings(), written.append, env={})
    kind = notifier.message(ConvKey.dm("bob"), HOSTILE, HOSTILE, mention=False, looking=False)
    assert kind == "dm"
    (out,) = written
    assert out.startswith(BEL)
    bodies = osc_bodies(out)
    assert len(bodies) == 1 and bodies[0].startswith("777;notify;")
    assert "\x1b" not in out[1:].replace("\x1b]777", "").replace("\x1b\\", "")


def test_notifier_respects_focus_kinds_and_protocol() -> None:
    written: list[str] = []
    room = ConvKey.room("lobby")
    notifier = Notifier(NotifySettings(mention=False), written.append, env={"WT_SESSION": "1"})
    assert notifier.message(room, "bob", "alice: hi", mention=True, looking=False) is None
    assert notifier.message(room, "bob", "plain", mention=False, looking=False) is None
    dm = ConvKey.dm("bob")
    assert notifier.message(dm, "bob", "hi", mention=False, looking=True) is None
    assert written == []
    assert notifier.message(dm, "bob", "hi", mention=False, looking=False) == "dm"
    assert osc_bodies(written[0])[0].startswith("9;")  # Windows Terminal: OSC 9
    quiet = Notifier(NotifySettings(bell=False, desktop="off"), written.append, env={})
    assert quiet.message(dm, "bob", "hi", mention=False, looking=False) == "dm"
    assert len(written) == 1  # nothing to write


def test_title_shows_unread_counts_once_per_change() -> None:
    written: list[str] = []
    notifier = Notifier(NotifySettings(), written.append, env={})
    notifier.title(3, 1, "alice @ \x1b]0;x\x07host")
    notifier.title(3, 1, "alice @ \x1b]0;x\x07host")
    assert len(written) == 1
    assert written[0].startswith(TITLE_PUSH)  # the terminal's own title is saved first
    (body,) = osc_bodies(written[0])
    assert body.startswith("2;(3!) imchat alice @ ") and "\x1b" not in body
    notifier.title(0, 0, "alice")
    assert written[-1] == osc_title("imchat alice")  # pushed only once
    assert notifier.restore_title() == TITLE_POP
    assert Notifier(NotifySettings(), written.append, env={}).restore_title() == ""


def test_links_only_for_allowed_schemes() -> None:
    text = "see https://example.org/a_(b) and http://x.y/z. mail mailto:ops@example.org"
    assert [url for _, _, url in find_urls(text)] == [
        "https://example.org/a_(b)",
        "http://x.y/z",
        "mailto:ops@example.org",
    ]
    for bad in ("javascript:alert(1)", "file:///etc/passwd", "ftp://x", "https://"):
        assert find_urls(bad) == [] or safe_url(bad) is None


def test_url_is_percent_encoded_so_osc8_cannot_be_closed_early() -> None:
    url = safe_url("https://evil.example/\x1b]8;;\x1b\\\x07\x9c\u202e é")
    assert url is not None
    assert re.fullmatch(r"[\x21-\x7e]+", url) and "\\" not in url
    assert "%1B" in url and "%07" in url and "%C2%9C" in url and "%C3%A9" in url


def test_linkify_keeps_the_visible_text_literal() -> None:
    raw = "docs at https://example.org/[b]x[/b] ok"
    text = linkify(Text(raw))
    assert text.plain == raw
    links = {span.style.link for span in text.spans if not isinstance(span.style, str)}
    assert links == {"https://example.org/[b]x[/b]"}
    # What Rich would write: one OSC 8 pair, the URL exactly as sanitised.
    console = Console(force_terminal=True, color_system="truecolor", width=80)
    with console.capture() as capture:
        console.print(text)
    assert capture.get().count("\x1b]8;") == 2


def test_a_flood_notifies_once_per_conversation_per_quiet_period() -> None:
    written: list[str] = []
    now = [100.0]
    notifier = Notifier(NotifySettings(), written.append, env={}, clock=lambda: now[0])
    bob, carol = ConvKey.dm("bob"), ConvKey.dm("carol")
    assert notifier.message(bob, "bob", "1", mention=False, looking=False) == "dm"
    assert notifier.message(bob, "bob", "2", mention=False, looking=False) is None
    assert notifier.message(carol, "carol", "3", mention=False, looking=False) == "dm"
    now[0] += QUIET
    assert notifier.message(bob, "bob", "4", mention=False, looking=False) == "dm"
    assert len(written) == 3
