"""Smoke test of ``benchmarks/ircfanout.py``: a tiny run over the IRC listener of a real
server subprocess, every receiver checked to get every message exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
RECEIVERS, MESSAGES = 3, 20


@pytest.mark.timeout(60)
def test_ircfanout_delivers_everything_once(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "ircfanout.py"), "--servers", "imchat,imchat-irc",
         "--scenario", "flat", "-R", str(RECEIVERS), "-M", str(MESSAGES), "--verify",
         "--no-pin", "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=55, cwd=BENCH,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row["server"]: row for row in json.loads(out.read_text())}
    irc = rows["imchat-irc"]
    assert irc["lost"] == 0 and irc["errors"] == {}
    assert irc["delivered"] == irc["expected"] == RECEIVERS * MESSAGES
    assert irc["verified"] == RECEIVERS
    assert "imchat-irc / imchat" in proc.stdout
