"""Client library shared by ``imchat send``, the TUI and the tests."""

from .connection import DEFAULT_PORT, Connection, ConnectionClosed, Message, ServerError

__all__ = ["DEFAULT_PORT", "Connection", "ConnectionClosed", "Message", "ServerError"]
