"""Telling the user something arrived while they looked elsewhere: bell, desktop, title.

Desktop notifications are escape sequences written to the terminal (OSC 777 for rxvt,
foot, kitty, WezTerm, VTE; OSC 9 for iTerm2, Windows Terminal, ConEmu), and the window title
is one too (OSC 2). Their text comes from the network, so it only ever passes through
:func:`osc_safe` first: a sender must not be able to end the sequence early and make the
terminal run the rest as commands. The policy (which event notifies, when) is
:class:`Notifier`; the sequences are plain functions, so both are testable without a
terminal.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imchat.client.session import ConvKey, ConvKind

BEL = "\x07"
_ST = "\x1b\\"  # string terminator
TITLE_PUSH = "\x1b[22;0t"
TITLE_POP = "\x1b[23;0t"

# Every C0 and C1 control (ESC, BEL and ST 0x9c end an OSC), DEL, the bidi controls, and
# ";" which separates OSC 777's fields (a sender could otherwise forge the title).
_OSC_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069;]")
_SPACES = re.compile(r"\s+")

#: Seconds after a notification in which the same conversation does not notify again.
QUIET = 5.0
#: Longest text put into one sequence; terminals drop or truncate longer ones anyway.
OSC_TEXT_LIMIT = 200


def osc_safe(text: str, limit: int = OSC_TEXT_LIMIT) -> str:
    """``text`` fit to sit inside an OSC string: controls and terminators gone, one line."""
    flat = _SPACES.sub(" ", _OSC_UNSAFE.sub(" ", text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def osc777(title: str, body: str) -> str:
    """A desktop notification in the rxvt/foot/kitty/VTE form."""
    return f"\x1b]777;notify;{osc_safe(title)};{osc_safe(body)}{_ST}"


def osc9(body: str) -> str:
    """A desktop notification in the iTerm2 / Windows Terminal form (no separate title)."""
    return f"\x1b]9;{osc_safe(body)}{_ST}"


def osc_title(title: str) -> str:
    """Set the terminal window's title."""
    return f"\x1b]2;{osc_safe(title)}{_ST}"


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """What notifies, and how (the ``[notify]`` table of the config file)."""

    mention: bool = True
    dm: bool = True
    announcement: bool = True
    bell: bool = True
    #: ``"osc777"``, ``"osc9"``, ``"off"``, or ``"auto"`` (OSC 9 on iTerm2 and Windows
    #: Terminal, which do not speak 777; OSC 777 elsewhere). Never both: a terminal that
    #: understands both would show two.
    desktop: str = "auto"
    title: bool = True


DESKTOP_CHOICES = ("auto", "osc777", "osc9", "off")


def desktop_protocol(choice: str, env: Mapping[str, str]) -> str:
    """Resolve ``"auto"`` from the environment the terminal sets."""
    if choice != "auto":
        return choice
    if env.get("TERM_PROGRAM") == "iTerm.app" or env.get("WT_SESSION"):
        return "osc9"
    return "osc777"


def kind_of(key: ConvKey, mention: bool) -> str | None:
    """The notification kind of a new message, or None if it is not worth one."""
    if key.kind is ConvKind.DM:
        return "dm"
    if key.kind is ConvKind.ANNOUNCE:
        return "announcement"
    return "mention" if mention else None


class Notifier:
    """Decides whether a new message notifies, and writes the sequences.

    ``write`` sends raw text to the terminal (the app's driver). Nothing is sent for the
    conversation the user is looking at while the terminal has focus, nor more than once
    per conversation in :data:`QUIET` seconds.
    """

    def __init__(
        self,
        settings: NotifySettings,
        write: Callable[[str], None],
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.write = write
        self.clock = clock
        self._last: dict[ConvKey, float] = {}
        self.desktop = desktop_protocol(settings.desktop, os.environ if env is None else env)
        self._title: str | None = None

    def message(
        self, key: ConvKey, sender: str, text: str, *, mention: bool, looking: bool
    ) -> str | None:
        """Notify about one new message; returns the kind notified, or None."""
        kind = kind_of(key, mention)
        if kind is None or looking or not getattr(self.settings, kind):
            return None
        # A busy DM or a flood of mentions rings once per conversation every few seconds.
        now = self.clock()
        if now - self._last.get(key, -QUIET) < QUIET:
            return None
        self._last[key] = now
        out = ""
        if self.settings.bell:
            out += BEL
        where = {"dm": "direct message", "announcement": "announcement"}.get(kind, f"#{key.name}")
        title = f"imchat: {sender} ({where})"
        if self.desktop == "osc777":
            out += osc777(title, text)
        elif self.desktop == "osc9":
            out += osc9(f"{title}: {text}")
        if out:
            self.write(out)
        return kind

    def title(self, unread: int, attention: int, label: str) -> None:
        """Show unread counts in the window title (written only when it changes)."""
        if not self.settings.title:
            return
        head = f"({unread}{'!' if attention else ''}) " if unread else ""
        title = f"{head}imchat {label}"
        if title != self._title:
            # The first time, save the terminal's own title on its stack (xterm, tmux, VTE;
            # others ignore it) so that :meth:`restore_title` can put it back on exit.
            push = TITLE_PUSH if self._title is None else ""
            self._title = title
            self.write(push + osc_title(title))

    def restore_title(self) -> str:
        """The sequence that gives the terminal its title back ("" if we never set one)."""
        return TITLE_POP if self._title is not None else ""
