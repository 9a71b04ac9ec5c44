"""The DM partners file (imchat/tui/dm_peers.py): per server and nick, bounded, private."""

from __future__ import annotations

import stat
from pathlib import Path

from imchat.tui.dm_peers import MAX_PEERS, PEERS_FILE, DmPeers


def test_partners_are_kept_per_server_and_nick(tmp_path: Path) -> None:
    peers = DmPeers(tmp_path)
    peers.add("h", 7667, "Alice", "Bob")
    peers.add("h", 7667, "alice", "carol")
    peers.add("h", 7668, "alice", "dave")
    peers.add("h", 7667, "ALICE", "BOB")  # a new spelling replaces the old one
    peers.add("h", 7667, "alice", "carol")  # noted again: now the latest
    again = DmPeers(tmp_path)
    assert again.get("h", 7667, "alice") == ["BOB", "carol"]
    assert again.get("h", 7668, "Alice") == ["dave"]
    assert again.get("other", 7667, "alice") == []
    mode = stat.S_IMODE((tmp_path / PEERS_FILE).stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [PEERS_FILE]  # no temporary file left


def test_the_oldest_partners_go_past_the_bound(tmp_path: Path) -> None:
    peers = DmPeers(tmp_path)
    for n in range(MAX_PEERS + 5):
        peers.add("h", 1, "me", f"u{n}")
    kept = peers.get("h", 1, "me")
    assert len(kept) == MAX_PEERS and kept[0] == "u5" and kept[-1] == f"u{MAX_PEERS + 4}"


def test_a_damaged_or_unwritable_file_costs_nothing_but_the_list(tmp_path: Path) -> None:
    (tmp_path / PEERS_FILE).write_text('{"h:1 me": ["ok", 3, "[not a nick]"], "x": 1}')
    assert DmPeers(tmp_path).get("h", 1, "me") == ["ok"]
    (tmp_path / PEERS_FILE).write_text("not json")
    assert DmPeers(tmp_path).get("h", 1, "me") == []
    blocked = tmp_path / "file"
    blocked.write_text("")
    DmPeers(blocked / "sub").add("h", 1, "me", "bob")  # no directory can be made: no error
