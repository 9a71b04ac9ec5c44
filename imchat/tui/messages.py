"""App-wide Textual messages (a widget's own messages are nested in its class)."""

from __future__ import annotations

from textual.message import Message

from imchat.client.session import ConvKey, SessionEvent


class SessionUpdate(Message):
    """Something happened in the :class:`~imchat.client.session.ChatSession`.

    The session calls its listeners synchronously; posting this message moves the work onto
    the app's message queue, in order, so widgets are only touched from Textual's side.
    """

    def __init__(self, event: SessionEvent) -> None:
        super().__init__()
        self.event = event


class OpenConversation(Message):
    """Show this conversation (from the sidebar, a member click, a key binding)."""

    def __init__(self, key: ConvKey) -> None:
        super().__init__()
        self.key = key


class OpenDirect(Message):
    """Open (creating if needed) the DM conversation with ``nick``."""

    def __init__(self, nick: str) -> None:
        super().__init__()
        self.nick = nick


class RunCommand(Message):
    """Run an input line as if typed (the command palette uses this)."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line
