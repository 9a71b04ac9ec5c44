"""The TUI's widgets, one per module."""

from .chat_input import ChatInput
from .conversation_list import ConversationList
from .conversation_view import ConversationView
from .member_list import MemberList
from .message_log import MessageLog
from .search_bar import SearchBar
from .status_bar import StatusBar

__all__ = [
    "ChatInput",
    "ConversationList",
    "ConversationView",
    "MemberList",
    "MessageLog",
    "SearchBar",
    "StatusBar",
]
