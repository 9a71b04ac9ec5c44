"""The reconnecting session is usable without Textual, and ``imchat.tui`` imports it lazily."""

import subprocess
import sys

import pytest

CHECK = "import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('textual')))"


@pytest.mark.parametrize("module", ["imchat.client.session", "imchat.tui"])
def test_module_does_not_import_textual(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_the_app_module_does_import_textual() -> None:
    """The check above can fail: the same probe sees Textual where it is used."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(module="imchat.tui.app")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "'textual'" in out.stdout
