"""Command palette entries beyond the slash commands: jump to a conversation.

Textual's built-in "Screenshot" saved into ``~/Downloads`` and failed where that directory
does not exist (a server, a container); :func:`screenshot_command` replaces it with one that
saves into the directory the config names and says where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from textual.app import SystemCommand
from textual.command import DiscoveryHit, Hit, Hits, Provider

from imchat.client.session import ConvKey, ConvKind
from imchat.tui.messages import OpenConversation
from imchat.tui.render import clean
from imchat.tui.widgets.conversation_list import ConversationList


class ConversationCommands(Provider):
    """Lists every open conversation, by number and name, to switch to it."""

    def _targets(self) -> list[tuple[str, str, ConvKey]]:
        try:
            items = self.screen.query_one(ConversationList).items
        except Exception:  # the palette opened on a screen without the chat layout
            return []
        targets = []
        for number, status in enumerate(items, 1):
            name = ("@" if status.key.kind is ConvKind.DM else "") + clean(status.title)
            unread = f" ({status.unread} unread)" if status.unread else ""
            targets.append((f"go to {number}: {name}", f"switch to {name}{unread}", status.key))
        return targets

    def _open(self, key: ConvKey) -> None:
        self.app.post_message(OpenConversation(key))

    async def discover(self) -> Hits:
        for title, help, key in self._targets():
            yield DiscoveryHit(title, partial(self._open, key), help=help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help, key in self._targets():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._open, key), help=help)


def screenshot_command(
    commands: Iterable[SystemCommand], save: Callable[[], None]
) -> Iterable[SystemCommand]:
    """The system commands with "Screenshot" running ``save`` instead of Textual's."""
    for command in commands:
        if command.title == "Screenshot":
            yield SystemCommand("Screenshot", "Save an SVG of the screen (says where)", save)
        else:
            yield command
