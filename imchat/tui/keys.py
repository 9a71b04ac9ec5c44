"""The key bindings as a table for people: ``imchat join --help`` and ``/help`` print it.

Generated from the bindings of the app and the input themselves, so it cannot drift from
what the keys do. A run of bindings to one action with numbered arguments (Alt+1 … Alt+9)
is shown as one row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from textual.binding import Binding, BindingType

_NAMES = {
    "pageup": "PageUp",
    "pagedown": "PageDown",
    "up": "Up",
    "down": "Down",
    "enter": "Enter",
    "tab": "Tab",
    "escape": "Esc",
    "end": "End",
    "home": "Home",
}
#: Keys the input handles itself (not as bindings, to keep the order of burst keys).
INPUT_KEYS = (
    ("Enter", "send the line (//text sends /text)"),
    ("Tab", "complete a command or nick (again: cycle)"),
)


def key_name(key: str) -> str:
    """``ctrl+n`` → ``Ctrl+N``; ``pageup`` → ``PageUp``."""
    parts = key.split("+")
    *mods, last = parts
    shown = _NAMES.get(last, last.upper() if len(last) == 1 else last.capitalize())
    return "+".join([m.capitalize() for m in mods] + [shown])


def _say(binding: Binding) -> str:
    """The longer tooltip when a binding has one, else its footer description."""
    return binding.tooltip or binding.description


def _rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    groups: dict[str, list[Binding]] = {}
    for binding in bindings:
        if not isinstance(binding, Binding) or not binding.description:
            continue
        action = binding.action.split("(")[0]
        groups.setdefault(action, []).append(binding)
    rows = []
    for group in groups.values():
        keys = [key_name(k.strip()) for b in group for k in b.key.split(",")]
        if len(group) > 2:
            label = f"{keys[0]} … {keys[-1]}"
            text = re.sub(r"\s*\d+$", " N", _say(group[0]))
        else:
            label = " / ".join(keys)
            text = " / ".join(dict.fromkeys(_say(b) for b in group))
        rows.append((label, text))
    return rows


def key_rows() -> list[tuple[str, str]]:
    from imchat.tui.app import ChatApp
    from imchat.tui.widgets.chat_input import ChatInput

    return [*INPUT_KEYS, *_rows(ChatInput.BINDINGS), *_rows(ChatApp.BINDINGS)]


def keys_help() -> str:
    """The table as paragraphs (Typer's help joins single newlines into one line)."""
    rows = key_rows()
    width = max(len(label) for label, _ in rows)
    lines = ["Keys:"] + [f"{label.ljust(width)}  {text}" for label, text in rows]
    return "\n\n".join(lines)
