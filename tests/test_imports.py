"""The protocol and the server stay importable without the TUI (and the protocol without I/O)."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})
print(','.join(bad))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("imchat.protocol", ("textual", "asyncio", "socket", "imchat.server")),
        ("imchat.server", ("textual",)),
        ("imchat.client", ("textual",)),
    ],
)
def test_module_does_not_import(module: str, forbidden: tuple[str, ...]) -> None:
    top = tuple({name.split(".")[0] for name in forbidden} - {"imchat"})
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, forbidden=top)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == ""
    if "imchat.server" in forbidden:
        check = f"import sys, {module}; print('imchat.server' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
        assert out.stdout.strip() == "False"
