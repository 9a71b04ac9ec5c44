"""Where a client keeps its guest identities' ``resume`` secrets (protocol revision 2).

A guest nick belongs to the identity that took it until that identity's hold ends; a
``hello`` continues it only with the identity's ``resume``. Keeping it on disk, per server
and nick, lets ``imchat send`` run twice in a row, a reconnect keep the identity and a
restarted client get its nick back.

The secrets live in ``resume.json`` in the platform's user state directory
(``platformdirs.user_state_dir("imchat")``, e.g. ``~/.local/state/imchat`` on Linux), or in
``$IMCHAT_STATE_DIR``; the file is private (mode 0600). Deleting it forgets every identity.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import platformdirs

from imchat.protocol import nick_key

RESUME_FILE = "resume.json"


def state_dir() -> Path:
    override = os.environ.get("IMCHAT_STATE_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_state_dir("imchat", appauthor=False))


def write_private_json(path: Path, data: object) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one,
    never half of one), never readable by others (not even for an instant)."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def state_slot(host: str, port: int, nick: str) -> str:
    """The key of what a state file keeps for one nick on one server."""
    return f"{host}:{port} {nick_key(nick)}"


def read_json_object(path: Path) -> dict[str, object]:
    """A state file's JSON object; empty if it is missing, unreadable or not an object (a
    damaged file costs what it held, never the client's start)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ResumeStore:
    """``resume`` secrets by ``host:port`` and nick key, in one private JSON file."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else state_dir()
        self.path = self.directory / RESUME_FILE

    def _load(self) -> dict[str, str]:
        data = read_json_object(self.path)
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def _save(self, data: dict[str, str]) -> None:
        write_private_json(self.path, data)

    def get(self, host: str, port: int, nick: str) -> str | None:
        return self._load().get(state_slot(host, port, nick))

    def put(self, host: str, port: int, nick: str, resume: str) -> None:
        data = self._load()
        slot = state_slot(host, port, nick)
        if data.get(slot) == resume:
            return
        data[slot] = resume
        # An unwritable state dir costs the nick after a restart, not the session.
        with contextlib.suppress(OSError):
            self._save(data)

    def forget(self, host: str, port: int, nick: str) -> None:
        data = self._load()
        if data.pop(state_slot(host, port, nick), None) is None:
            return
        with contextlib.suppress(OSError):
            self._save(data)


def remember_welcome(
    store: ResumeStore | None, host: str, port: int, nick: str, welcome: dict[str, object]
) -> None:
    """Keep a guest welcome's ``resume``; forget any for an account's nick."""
    if store is None:
        return
    resume = welcome.get("resume")
    if isinstance(resume, str) and resume:
        store.put(host, port, str(welcome.get("nick", nick)), resume)
    elif welcome.get("account"):
        store.forget(host, port, nick)
