"""The IRC face of the imchat server: IRC clients as native sessions of the same hub.

``lines`` parses and formats IRC lines (sans-I/O), ``translate`` turns native events into
lines, ``registration``/``history``/``commands`` map IRC commands onto native requests,
``session`` is the connection, ``listener`` opens the ports. See ``docs/irc.md``.
"""

from .listener import start_irc_listeners

__all__ = ["start_irc_listeners"]
