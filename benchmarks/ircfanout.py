#!/usr/bin/env python3
"""IRC fan-out: imchat's IRC listener beside its native protocol and InspIRCd, in one run.

The workload is ``fanout.py``'s (R receivers in one room, one sender, flat out and paced);
the new server kind ``imchat-irc`` is the same ``imchat server`` with ``--irc-port``, driven by
the same IRC client as InspIRCd. Every server kind ``fanout.py`` knows can be added with
``--servers``. At the end: ``imchat-irc / imchat`` and ``imchat-irc / inspircd`` ratios (the
goal: IRC CPU per delivery within 1.2 x native). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import fanout
from ircbench import IrcDriver
from serverproc import ServerProc, free_port, imchat_server

DEFAULT_ARGS = ["--servers", "imchat,imchat-irc,inspircd", "--scenario", "flat,paced"]
METRICS = (
    ("cpu_us_per_delivery", "CPU/delivery"),
    ("deliveries_per_s", "deliveries/s"),
    ("p99_ms", "p99"),
    ("server_hwm_kb", "peak RSS"),
)


def imchat_irc_server(tmp: Path, log_path: Path, cpu: int | None) -> ServerProc:
    """``imchat server`` whose IRC port is the one the benchmark's clients connect to."""
    native = imchat_server(tmp / "data", log_path, cpu)
    port = free_port()
    return ServerProc(
        "imchat-irc",
        [*native.argv, "--irc-port", str(port)],
        log_path=log_path,
        port=port,
        env=native._env,  # the same environment as the native run
        data_dir=native.data_dir,
    )


fanout.FACTORIES["imchat-irc"] = (imchat_irc_server, IrcDriver)


def irc_ratios(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    key = ("scenario", "receivers", "idle_other")
    for base in ("imchat", "inspircd"):
        for r in (r for r in rows if r["server"] == "imchat-irc"):
            match = next(
                (o for o in rows if o["server"] == base and all(o[k] == r[k] for k in key)),
                None,
            )
            if match is None:
                continue
            parts = [f"{label} {r[m] / match[m]:.2f}" for m, label in METRICS if match.get(m)]
            out.append(
                f"imchat-irc / {base:8} {r['scenario']:6} R={r['receivers']}: " + ", ".join(parts)
            )
    return out


def main(argv: list[str]) -> int:
    args = list(argv)
    if not any(a.startswith("--servers") for a in args):
        args += DEFAULT_ARGS[:2]
    if not any(a.startswith("--scenario") for a in args):
        args += DEFAULT_ARGS[2:]
    keep = None
    if "--json" not in args:
        keep = Path(tempfile.mkstemp(prefix="ircfanout-", suffix=".json")[1])
        args += ["--json", str(keep)]
    json_path = Path(args[args.index("--json") + 1])
    code = fanout.main(args)
    if json_path.exists() and json_path.stat().st_size:
        rows = json.loads(json_path.read_text())
        print("== IRC ratios ==")
        print("\n".join(irc_ratios(rows)) or "(nothing to compare)")
    if keep is not None:
        keep.unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
