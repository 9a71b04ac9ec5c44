"""Older history for a conversation that opened with less than a page of it.

A conversation opened by a live message (a DM in a fresh session, a queued DM after the
welcome, an announcement) shows only that message, although the stream holds earlier
ones: the user would have to know to press PageUp. The app asks once, as soon as the
conversation has messages and the session is connected, whether a page of older history
should follow (:func:`wants_older`), and if so loads it the way PageUp does (``history
before`` the first seq shown), so nothing is shown twice and the log keeps following.
"""

from __future__ import annotations

from imchat.client.session import INITIAL_HISTORY, Conversation
from imchat.tui.widgets.message_log import MessageLog


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
