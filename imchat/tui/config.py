"""The terminal client's config file, ``~/.config/imchat/config.toml``.

Defaults for ``imchat join``: the nick, the server, the look and which events notify. Flags
and ``IMCHAT_*`` variables override it. A file that cannot be read, is not TOML, or holds a
key or value we do not know raises :class:`ConfigError` with one line that names the file
and the problem (a typo must not be silently ignored, nor end in a traceback).
No Textual import here: the CLI reads the file before the app starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs
from rich.color import Color, ColorParseError

from imchat.protocol import ProtocolError, is_valid_nick, normalize_room
from imchat.tui.notify import DESKTOP_CHOICES, NotifySettings

EXAMPLE = """\
nick = "alice"            # default for --nick
room = "lobby"            # joined on connect ("" joins nothing)

[server]
host = "127.0.0.1"
port = 7667
tls = false
# ca = "/etc/imchat/ca.pem"

[appearance]
theme = "textual-dark"    # any Textual theme: nord, gruvbox, dracula, solarized-light, ...
time_format = "%H:%M"     # strftime; "%H:%M:%S" for seconds
mention = "#3b3000"       # background of lines that mention you
search = "#1f4f7a"        # background of the current search result

[notify]                  # bell and desktop notification, never for the window you look at
mention = true
dm = true
announcement = true
bell = true
desktop = "auto"          # auto, osc777, osc9 or off
title = true              # unread counts in the terminal's title

# screenshot_dir = "~/Pictures"   # where the palette's Screenshot saves
"""


class ConfigError(Exception):
    """The config file is unusable; ``str()`` is one line for the user."""


def default_path() -> Path:
    return platformdirs.user_config_path("imchat") / "config.toml"


def default_screenshot_dir() -> Path:
    return platformdirs.user_data_path("imchat") / "screenshots"


@dataclass(frozen=True, slots=True)
class Appearance:
    theme: str = "textual-dark"
    time_format: str = "%H:%M"
    mention: str = "#3b3000"
    search: str = "#1f4f7a"


@dataclass(frozen=True, slots=True)
class TuiConfig:
    """Everything the file may set; None means "not set here" for the overridable ones."""

    nick: str | None = None
    room: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool | None = None
    ca: Path | None = None
    appearance: Appearance = field(default_factory=Appearance)
    notify: NotifySettings = field(default_factory=NotifySettings)
    screenshot_dir: Path = field(default_factory=default_screenshot_dir)
    path: Path | None = None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.pop(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _typed(where: str, value: Any, kind: type) -> Any:
    # bool is an int in Python: a port of `true` must not pass.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "a number", bool: "true or false"}
        raise ConfigError(f"{where} must be {names[kind]}")
    return value


def _check_unknown(table: dict[str, Any], prefix: str) -> None:
    if table:
        raise ConfigError(f"unknown key {prefix}{sorted(table)[0]}")


def _colour(where: str, value: Any) -> str:
    text = _typed(where, value, str)
    try:
        Color.parse(text)
    except ColorParseError:
        raise ConfigError(f"{where}: {text!r} is not a colour") from None
    return str(text)


def parse(data: dict[str, Any], path: Path | None = None) -> TuiConfig:
    """Build a :class:`TuiConfig` from parsed TOML (raises :class:`ConfigError`)."""
    data = dict(data)
    server = _table(data, "server")
    look = _table(data, "appearance")
    notify = _table(data, "notify")
    values: dict[str, Any] = {"path": path}
    if "nick" in data:
        nick = _typed("nick", data.pop("nick"), str)
        if not is_valid_nick(nick):
            raise ConfigError(f"nick: {nick!r} is not a valid nick")
        values["nick"] = nick
    if "room" in data:
        room = _typed("room", data.pop("room"), str)
        if room:
            try:
                normalize_room(room)
            except ProtocolError:
                raise ConfigError(f"room: {room!r} is not a valid room name") from None
        values["room"] = room
    if "screenshot_dir" in data:
        values["screenshot_dir"] = Path(_typed("screenshot_dir", data.pop("screenshot_dir"), str))
        values["screenshot_dir"] = values["screenshot_dir"].expanduser()
    _check_unknown(data, "")
    if "host" in server:
        values["host"] = _typed("server.host", server.pop("host"), str)
    if "port" in server:
        port = _typed("server.port", server.pop("port"), int)
        if not 1 <= port <= 65535:
            raise ConfigError(f"server.port: {port} is not a TCP port")
        values["port"] = port
    if "tls" in server:
        values["tls"] = _typed("server.tls", server.pop("tls"), bool)
    if "ca" in server:
        values["ca"] = Path(_typed("server.ca", server.pop("ca"), str)).expanduser()
    _check_unknown(server, "server.")
    look_values: dict[str, Any] = {}
    if "theme" in look:
        from textual.theme import BUILTIN_THEMES

        theme = _typed("appearance.theme", look.pop("theme"), str)
        if theme not in BUILTIN_THEMES:
            raise ConfigError(
                f"appearance.theme: unknown theme {theme!r} (try: {', '.join(BUILTIN_THEMES)})"
            )
        look_values["theme"] = theme
    if "time_format" in look:
        look_values["time_format"] = _typed("appearance.time_format", look.pop("time_format"), str)
    for name in ("mention", "search"):
        if name in look:
            look_values[name] = _colour(f"appearance.{name}", look.pop(name))
    _check_unknown(look, "appearance.")
    values["appearance"] = Appearance(**look_values)
    notify_values: dict[str, Any] = {}
    for spec in fields(NotifySettings):
        if spec.name in notify:
            value = notify.pop(spec.name)
            if spec.name == "desktop":
                if value is False:
                    value = "off"
                elif value not in DESKTOP_CHOICES:
                    raise ConfigError(f"notify.desktop must be one of {', '.join(DESKTOP_CHOICES)}")
            else:
                _typed(f"notify.{spec.name}", value, bool)
            notify_values[spec.name] = value
    _check_unknown(notify, "notify.")
    values["notify"] = NotifySettings(**notify_values)
    return TuiConfig(**values)


def load(path: Path | None = None) -> TuiConfig:
    """Read the config file; a missing default file is an empty config.

    An explicitly given ``path`` must exist. Every problem is a :class:`ConfigError` whose
    message starts with the file's name.
    """
    explicit = path is not None
    path = path or default_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return TuiConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
