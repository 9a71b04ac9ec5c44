"""Smoke test of ``benchmarks/fanout.py``: a tiny run against a real server subprocess.

Every receiver must get every message exactly once (``--verify``); a unit test shows the
check itself catches a lost or repeated message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imchat.protocol import encode_message

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
RECEIVERS, MESSAGES = 3, 20


@pytest.mark.timeout(30)
def test_fanout_every_receiver_gets_every_message(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "fanout.py"), "--servers", "imchat", "--scenario", "flat",
         "-R", str(RECEIVERS), "-M", str(MESSAGES), "--verify", "--no-pin",
         "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=25,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [row] = json.loads(out.read_text())
    assert row["server"] == "imchat"
    assert row["lost"] == 0 and row["errors"] == {}
    assert row["acks"] == MESSAGES
    assert row["delivered"] == row["expected"] == RECEIVERS * MESSAGES
    assert row["verified"] == RECEIVERS
    assert row["samples"] == RECEIVERS * MESSAGES  # every receiver read every timestamp
    assert 0 < row["p50_ms"] <= row["p99_ms"]


def _receiver(seqs: list[int]) -> tuple[Any, Any]:
    """A verifying ImchatClient fed ``msg`` frames for ``seqs``, one byte at a time."""
    sys.path.insert(0, str(BENCH))
    try:
        from loadgen import ImchatClient, Stats, make_text
    finally:
        sys.path.remove(str(BENCH))
    stats = Stats(counting=True)
    client = ImchatClient(stats, verify=True)
    client.start_counting()
    stream = b"".join(
        encode_message({"type": "msg", "room": "bench", "seq": s + 1, "ts": 1.0, "from": "s0",
                        "text": make_text(s, 0, 100)})
        for s in seqs
    )  # fmt: skip
    for i in range(len(stream)):
        client.data_received(stream[i : i + 1])
    return client, stats


@pytest.mark.parametrize(
    ("seqs", "complete"),
    [([0, 1, 2, 3], True), ([0, 1, 3], False), ([0, 1, 1, 2, 3], False)],
)
def test_verify_detects_missing_or_repeated(seqs: list[int], complete: bool) -> None:
    client, stats = _receiver(seqs)
    assert stats.delivered == client.count == len(seqs)
    assert client.received_exactly(4) is complete


@pytest.mark.timeout(60)
def test_storm_brings_every_client_back_resynced() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "storm.py"), "--clients", "30", "--room-size", "10"],
        capture_output=True, text=True, timeout=55,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["resynced"] == result["clients"] == 30
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]


@pytest.mark.timeout(90)
def test_output_memory_benchmark_reports_growth_against_the_bound() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "output_memory.py"), "--guests", "3", "--requests", "1",
         "--settle", "2", "--max-output-total", str(16 * 1024 * 1024)],
        capture_output=True, text=True, timeout=85,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["guests"] == 3
    assert result["history_reply_mib"] > 1
    assert result["bound_mib"] == 16 + 64
