"""Smoke test of ``benchmarks/http.py``: a tiny run against a real server subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "http.py"


@pytest.mark.timeout(60)
def test_http_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "-n", "30", "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    http, native = json.loads(out.read_text())
    assert (http["protocol"], native["protocol"]) == ("http", "native")
    for row in (http, native):
        assert row["messages"] == 30 and row["msgs_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["server_cpu_us_per_msg"] >= 0
