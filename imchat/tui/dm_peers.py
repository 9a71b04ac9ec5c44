"""The DM partners this user has had on a server, remembered across restarts of the TUI.

The protocol has no request that lists a user's DM streams. A session learns of one from a
read marker (``markers`` at connect, ``marker`` events) or from a DM that arrives while it
runs. A DM that reached an earlier session (so the server's queue no longer holds it) and was
never opened leaves no marker: without a record of our own, the next start would not list
the conversation and the message would be invisible until the partner wrote again.

So the TUI writes down, per server (``host:port`` as given) and nick, every DM partner it
has seen a message with, in ``dm_peers.json`` in the client state directory (beside
``resume.json``: ``$IMCHAT_STATE_DIR``, or ``platformdirs.user_state_dir("imchat")``),
written atomically, mode 0600. At start the app opens a DM conversation for each, so the
session fetches their recent history with everything else at connect; a stream with
messages is listed and what follows the read marker counts as unread. A partner whose
stream is empty for us (a new store, a later guest identity with our nick) is not listed.
One whose history the server refuses (``rate_limited``, say) is listed at once with the
refusal in its log, and asked for again when opened or at the next connect
(``ChatApp._history_failed``).
Each costs one ``history`` request at every connect (the session catches up on every DM
conversation it holds), so the file keeps at most :data:`MAX_PEERS` partners per server and
nick: the app notes a partner once per run, at its first message, which moves it to the
end, and the ones not seen for longest go first. Deleting the file forgets them (the read
markers still list the DMs that were read).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from imchat.client.resume import read_json_object, state_dir, state_slot, write_private_json
from imchat.protocol import is_valid_nick, nick_key

PEERS_FILE = "dm_peers.json"
#: Partners kept per server and nick; the ones noted longest ago go first.
MAX_PEERS = 100


class DmPeers:
    """DM partners (as the server spells their nicks) by ``host:port`` and own nick key."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory if directory is not None else state_dir()) / PEERS_FILE

    def _load(self) -> dict[str, list[str]]:
        data = read_json_object(self.path)
        return {
            slot: [p for p in peers if isinstance(p, str) and is_valid_nick(p)]
            for slot, peers in data.items()
            if isinstance(slot, str) and isinstance(peers, list)
        }

    def get(self, host: str, port: int, nick: str) -> list[str]:
        """The partners remembered for ``nick`` on that server, noted longest ago first."""
        return self._load().get(state_slot(host, port, nick), [])

    def add(self, host: str, port: int, nick: str, peer: str) -> None:
        """Remember ``peer`` as the partner noted last (a new spelling replaces the old
        one); no write if it is that already."""
        data = self._load()
        slot = state_slot(host, port, nick)
        peers = data.get(slot, [])
        if peers[-1:] == [peer]:
            return
        peers = [p for p in peers if nick_key(p) != nick_key(peer)] + [peer]
        data[slot] = peers[-MAX_PEERS:]
        # An unwritable state dir costs the listing after a restart, not the session.
        with contextlib.suppress(OSError):
            write_private_json(self.path, data)
