"""The key bindings as a table for people: ``imchat join --help`` and ``/help`` print it.

Generated from the bindings of the app and the input themselves, so it cannot drift from
what the keys do. A run of bindings to one action with numbered arguments (Alt+1 … Alt+9)
is shown as one row (``Alt+1-9, Alt+0``).
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
    ("Shift+Tab", "cycle the completions backwards"),
)


def key_name(key: str) -> str:
    """``ctrl+n`` → ``Ctrl+N``; ``pageup`` → ``PageUp``."""
    parts = key.split("+")
    *mods, last = parts
    shown = _NAMES.get(last, last.upper() if len(last) == 1 else last.capitalize())
    return "+".join([m.capitalize() for m in mods] + [shown])


def _condense(keys: list[str]) -> str:
    """``Alt+1 … Alt+9, Alt+0`` → ``Alt+1-9, Alt+0``: runs of consecutive digits shortened."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) > 2:
            out.append(f"{run[0]}-{run[-1].rpartition('+')[2]}")
        else:
            out.extend(run)
        run.clear()

    for key in keys:
        head, _, last = key.rpartition("+")
        if run and last.isdigit():
            prev_head, _, prev = run[-1].rpartition("+")
            if prev_head == head and prev.isdigit() and int(last) == int(prev) + 1:
                run.append(key)
                continue
        flush()
        run.append(key)
    flush()
    return ", ".join(out)


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
            label = _condense(keys)
            text = re.sub(r"\s*\d+$", " N", _say(group[0]))
        else:
            label = " / ".join(keys)
            text = " / ".join(dict.fromkeys(_say(b) for b in group))
        rows.append((label, text))
    return rows


def key_rows() -> list[tuple[str, str]]:
    from imchat.tui.app import ChatApp
    from imchat.tui.widgets.chat_input import ChatInput

    palette = (
        key_name(ChatApp.COMMAND_PALETTE_BINDING),
        "command palette: commands, conversations, Screenshot",
    )
    return [*INPUT_KEYS, *_rows(ChatInput.BINDINGS), *_rows(ChatApp.BINDINGS), palette]


def keys_help() -> str:
    """The table as text, one key per line."""
    rows = key_rows()
    width = max(len(label) for label, _ in rows)
    lines = ["Keys:"] + [f"{label.ljust(width)}  {text}" for label, text in rows]
    return "\n".join(lines)
