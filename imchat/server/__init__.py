"""The imchat server: asyncio sessions over a pluggable store and fan-out.

This package never imports Textual (a test checks it).
"""

from .app import ChatServer
from .config import ServerConfig

__all__ = ["ChatServer", "ServerConfig"]
