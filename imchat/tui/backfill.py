"""Older history for a conversation that opened with less than a page of it.

A conversation opened by a live message (a DM in a fresh session, a queued DM after the
welcome, an announcement) shows only that message, although the stream holds earlier
ones: the user would have to know to press PageUp. The app asks once, as soon as the
conversation has messages and the session is connected, whether a page of older history
should follow (:func:`wants_older`), and if so loads it the way PageUp does (``history
before`` the first seq shown), so nothing is shown twice and the log keeps following.

The load can fail: the connection drops with the request out, the server answers it with
an error, or a reconnect began meanwhile (the session then loads nothing). :func:`load`
says so, and the app asks again at the next opportunity (the next messages of the
conversation, or the next connect); since the request names the first seq shown, a retry
never repeats a line.
"""

from __future__ import annotations

import logging

from imchat.client import ConnectionClosed, ServerError
from imchat.client.session import INITIAL_HISTORY, ChatSession, Conversation, ConvKey, NotConnected
from imchat.protocol import ProtocolError
from imchat.tui.widgets.message_log import MessageLog

log = logging.getLogger(__name__)


def wants_older(conv: Conversation, log: MessageLog) -> bool:
    """Whether older history exists above ``conv``'s first message and the log holds less
    than the page a conversation opens with (``INITIAL_HISTORY`` messages)."""
    first = conv.first_seq
    if conv.complete or first is None or first <= 1:
        return False
    shown = 0
    for entry in log.entries:
        if entry.meta.get("seq") is not None:
            shown += 1
            if shown >= INITIAL_HISTORY:
                return False
    return True


async def load(session: ChatSession, key: ConvKey) -> bool:
    """Load the page of older history above ``key``'s first message; whether that is done
    (False: it failed or was not sent, and should be asked for again later)."""
    try:
        added = await session.load_older(key, INITIAL_HISTORY)
    except (ServerError, ProtocolError, NotConnected, ConnectionClosed) as exc:
        log.info("older history for %s failed (asked again later): %s", key, exc)
        return False
    conv = session.conversations.get(key)
    return added > 0 or conv is None or conv.complete
