"""Slash commands: the one table the input, Tab completion, /help and the palette share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from imchat.tui.messages import RunCommand


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    #: The palette fills the input with "/name " for these instead of running them.
    takes_args: bool = False


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("/join", "/join ROOM", "join a room (and switch to it)", True),
    CommandSpec("/part", "/part [ROOM]", "leave the current room (or ROOM)"),
    CommandSpec(
        "/msg", "/msg NICK [TEXT]", "open a direct conversation, optionally saying TEXT", True
    ),
    CommandSpec("/me", "/me ACTION", "say an action: /me waves", True),
    CommandSpec("/topic", "/topic [TEXT|-]", "show the topic; set it to TEXT; - clears it", True),
    CommandSpec("/close", "/close", "close this window (a room: leave it too)"),
    CommandSpec("/goto", "/goto N", "switch to conversation N (as numbered on the left)", True),
    CommandSpec("/window", "/window N", "the same as /goto N", True),
    CommandSpec("/search", "/search TEXT", "find TEXT in this conversation (Ctrl+F)", True),
    CommandSpec("/users", "/users", "list who is online"),
    CommandSpec("/rooms", "/rooms", "list the server's rooms"),
    CommandSpec("/announce", "/announce TEXT", "send an announcement to everyone (admins)", True),
    CommandSpec("/reply", "/reply", "pick a message and answer it (quoted above your line)"),
    CommandSpec("/edit", "/edit", "pick one of your messages and edit it (Up: your last)"),
    CommandSpec("/delete", "/delete", "pick one of your messages and delete it"),
    CommandSpec("/react", "/react [EMOJI]", "pick a message and add or take back a reaction", True),
    CommandSpec("/find", "/find WORDS", "search every room and DM you can read; Enter jumps", True),
    CommandSpec("/clear", "/clear", "clear this conversation's window"),
    CommandSpec("/help", "/help", "show the commands and keys"),
    CommandSpec("/quit", "/quit", "leave imchat"),
)
BY_NAME = {c.name: c for c in COMMANDS}

KEYS_HELP = (
    "Ctrl+N / Ctrl+P next / previous conversation · Alt+1..9, Alt+0 jump (/goto N past 10) · "
    "Ctrl+F search · Tab complete · Up/Down recall (Up on an empty line edits your last message) · "
    "Shift+Enter or Ctrl+J new line · PgUp at the top loads older history · "
    "End back to the newest · F2 / F3 conversations / members pane · Ctrl+K command palette · "
    "Ctrl+Q quit"
)


def parse(line: str) -> tuple[str, str] | None:
    """``("/cmd", "args")`` for a command line; None for text to send.

    A line starting with ``//`` is text that starts with ``/`` (the first one is dropped by
    the caller).
    """
    if not line.startswith("/") or line.startswith("//"):
        return None
    name, _, args = line.partition(" ")
    return name.lower(), args.strip()


class ChatCommands(Provider):
    """Lists the slash commands in Textual's command palette."""

    async def discover(self) -> Hits:
        for spec in COMMANDS:
            yield DiscoveryHit(spec.usage, partial(self._run, spec), help=spec.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec in COMMANDS:
            score = max(matcher.match(spec.usage), matcher.match(spec.help))
            if score > 0:
                yield Hit(
                    score, matcher.highlight(spec.usage), partial(self._run, spec), help=spec.help
                )

    def _run(self, spec: CommandSpec) -> None:
        self.app.post_message(RunCommand(spec.name + (" " if spec.takes_args else "")))
