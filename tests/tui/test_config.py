"""The config file and ``imchat join``'s options: precedence, one-line errors, --help keys."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imchat import cli
from imchat.tui import config as tui_config
from imchat.tui.app import ChatApp
from imchat.tui.config import ConfigError, TuiConfig, load
from imchat.tui.keys import key_name

runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_parses_to_the_documented_values(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, tui_config.EXAMPLE))
    assert cfg.nick == "alice" and cfg.room == "lobby"
    assert (cfg.host, cfg.port, cfg.tls) == ("127.0.0.1", 7667, False)
    assert cfg.appearance.theme == "textual-dark" and cfg.notify.desktop == "auto"


def test_missing_default_file_is_an_empty_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tui_config, "default_path", lambda: tmp_path / "nope.toml")
    assert load() == TuiConfig()
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nick = ", "not valid TOML"),
        ("nick = 'bad nick'", "not a valid nick"),
        ("[server]\nport = 'x'", "server.port must be a number"),
        ("[server]\nport = true", "server.port must be a number"),
        ("[server]\nport = 70000", "not a TCP port"),
        ("[notify]\nbell = 'yes'", "notify.bell must be true or false"),
        ("[notify]\ndesktop = 'loud'", "notify.desktop must be one of"),
        ("[appearance]\ntheme = 'nope'", "unknown theme"),
        ("[appearance]\nmention = 'blurple'", "is not a colour"),
        ("[apperance]\ntheme = 'nord'", "unknown key apperance"),
        ("room = 'Bad Room!'", "not a valid room name"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def run_join(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]) -> Any:
    seen: dict[str, Any] = {}

    def fake_run_tui(host: str, port: int, nick: str, room: str | None, **kw: Any) -> int:
        seen.update(host=host, port=port, nick=nick, room=room, tls=kw["tls"], cfg=kw["config"])
        return 0

    monkeypatch.setattr("imchat.tui.run_tui", fake_run_tui)
    result = runner.invoke(cli.app, ["join", *args], env=env)
    return result, seen


def test_flags_and_env_override_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'nick = "carol"\nroom = "dev"\n[server]\nhost = "10.1.2.3"\nport = 7000\n'
        '[appearance]\ntheme = "nord"\n',
    )
    result, seen = run_join(monkeypatch, ["--config", str(path)], {})
    assert result.exit_code == 0, result.output
    assert (seen["nick"], seen["room"], seen["host"], seen["port"]) == (
        "carol",
        "dev",
        "10.1.2.3",
        7000,
    )
    assert seen["cfg"].appearance.theme == "nord"
    result, seen = run_join(
        monkeypatch,
        ["--config", str(path), "--nick", "dave", "--port", "7100", "--room", ""],
        {"IMCHAT_HOST": "127.0.0.2"},
    )
    assert result.exit_code == 0, result.output
    assert (seen["nick"], seen["room"], seen["host"], seen["port"]) == (
        "dave",
        None,
        "127.0.0.2",
        7100,
    )


def test_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[notify]\nbell = 'loud'\n")
    result, seen = run_join(monkeypatch, ["--config", str(path), "--nick", "a"], {})
    assert result.exit_code == 2 and not seen
    assert result.output.strip().count("\n") == 0
    assert "Traceback" not in result.output and "notify.bell" in result.output


def test_no_nick_anywhere_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = run_join(monkeypatch, ["--config", str(write(tmp_path, ""))], {})
    assert result.exit_code == 2 and "no nick" in result.output and not seen


def test_join_help_lists_every_key_binding() -> None:
    result = runner.invoke(cli.app, ["join", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    out = result.output
    for binding in ChatApp.BINDINGS:
        assert not isinstance(binding, tuple)
        if binding.description and not binding.action.startswith("goto"):
            assert key_name(binding.key) in out, binding.key
    # Alt+1 … Alt+9 and Alt+0 are one row.
    assert "Alt+1-9, Alt+0" in out and "conversation N" in out
    assert "Ctrl+F" in out and "Tab" in out and "complete" in out
    # The defaults are shown, not swallowed as Rich markup ("Your nick ." without them).
    assert "(default: from config)" in out and "(default: 7667)" in out


def test_the_readme_config_example_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = tui_config.parse(tomllib.loads(block))
    assert cfg.appearance.theme == "nord" and cfg.tls is True and cfg.notify.desktop == "auto"


def test_the_app_takes_its_look_from_the_config() -> None:
    import time

    from rich.style import Style

    from imchat.client.session import ChatSession
    from imchat.tui.config import Appearance

    look = Appearance(theme="nord", time_format="%H:%M:%S", mention="#112233", search="#445566")
    app = ChatApp(ChatSession("alice", "127.0.0.1", 1), config=TuiConfig(appearance=look))
    assert app.theme == "nord"
    assert app.formatter.time_format(0) == time.strftime("%H:%M:%S", time.localtime(0))
    entry = app.formatter.message({"type": "msg", "from": "bob", "text": "alice: hi", "ts": 0})
    assert entry.style == Style(bgcolor="#112233")
    assert app.search_style.bgcolor is not None and app.search_style.bgcolor.name == "#445566"
