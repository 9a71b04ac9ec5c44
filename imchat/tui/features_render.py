"""How revision 3 shows in a conversation: replies, edits, deletes and reactions.

Edit, delete and reaction messages are not lines of their own: they are folded into the
message they target (:class:`imchat.client.features.MessageBook`), which is drawn with a
quote line above it when it answers another, "(edited)" after its text, "message deleted"
instead of it, and its reactions with counts below. Rich only (no Textual), like
:mod:`imchat.tui.render`, and network text still only goes through :func:`clean`.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text

from imchat.client.features import TARGETING_KINDS, MessageBook, MessageView
from imchat.client.session import ConvKey
from imchat.protocol import nick_key
from imchat.tui.render import SYSTEM, Entry, Formatter, clean

QUOTE = Style(color="grey58")
REACTION = Style(color="grey85", bgcolor="grey23")
MY_REACTION = Style(color="black", bgcolor="#98c379", bold=True)
QUOTE_CHARS = 60


def folded(message: Any) -> bool:
    """Edits, deletes and reactions show inside their target, not as lines of their own."""
    return isinstance(message, dict) and message.get("kind") in TARGETING_KINDS


def snippet(text: str, width: int = QUOTE_CHARS) -> str:
    flat = " ".join(clean(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def decorate(
    formatter: Formatter, book: MessageBook, conv: ConvKey, message: dict[str, Any]
) -> Entry:
    """The entry of a plain or action message as it stands now."""
    seq = message.get("seq")
    view = book.view(conv, seq) if isinstance(seq, int) else None
    if view is None:
        entry = formatter.message(message)
    elif view.deleted:
        entry = formatter.message({**message, "text": ""})
        who = clean(view.deleted_by or "")
        note = "message deleted"
        if view.deleted_by and nick_key(view.deleted_by) != nick_key(view.sender):
            note += f" by {who}"
        entry.body = Text(note, style=SYSTEM)
    else:
        entry = formatter.message({**message, "text": view.text})
        if view.edited:
            entry.body.append(" (edited)", style=SYSTEM)
    if view is not None and view.reply_to is not None:
        entry.body = Text.assemble(_quote(book, conv, view.reply_to), "\n", entry.body)
    if view is not None and not view.deleted and view.reactions:
        line = _reactions(view, formatter.me)
        if line.plain:
            entry.body = Text.assemble(entry.body, "\n", line)
    entry.meta["message"] = message
    return entry


def _quote(book: MessageBook, conv: ConvKey, seq: int) -> Text:
    target = book.view(conv, seq)
    if target is None:
        return Text(f"↳ re: an earlier message (#{seq})", style=QUOTE)
    if target.deleted:
        return Text("↳ re: a deleted message", style=QUOTE)
    return Text.assemble(
        Text("↳ re ", style=QUOTE),
        Text(clean(target.sender), style=QUOTE + Style(bold=True)),
        Text(": " + snippet(target.text), style=QUOTE),
    )


def _reactions(view: MessageView, me: str) -> Text:
    parts: list[Text | str] = []
    for emoji, count in view.reaction_counts():
        style = MY_REACTION if view.reacted(me, emoji) else REACTION
        if parts:
            parts.append(" ")
        # An emoji is any short text, newlines included: one line of chips all the same.
        shown = " ".join(clean(emoji).split()) or "\u2423"  # ␣ for one of only spaces
        parts.append(Text(f" {shown} {count} ", style=style))
    return Text.assemble(*parts)
