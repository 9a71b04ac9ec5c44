"""The imchat Textual app: wires a :class:`ChatSession` to the widgets.

All network work runs in workers (the session's own loop, and one worker per command) and
every failure of those is reported by :meth:`ChatApp._guard`, in one place. Session events
arrive as :class:`SessionUpdate` messages and are applied in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import ContentSwitcher, Footer, Input

from imchat.client import ConnectionClosed, ServerError
from imchat.client.session import (
    ANNOUNCEMENTS,
    ChatSession,
    ConvKey,
    ConvKind,
    Gap,
    HistoryReset,
    MessagesAdded,
    NotConnected,
    OutboxChanged,
    RoomJoined,
    RoomLeft,
    SendFailed,
    ServerEvent,
    SessionEvent,
    State,
    StateChanged,
    Welcomed,
)
from imchat.protocol import ProtocolError, is_valid_nick, nick_key
from imchat.tui.commands import BY_NAME, COMMANDS, KEYS_HELP, ChatCommands, parse
from imchat.tui.messages import OpenConversation, OpenDirect, RunCommand, SessionUpdate
from imchat.tui.render import (
    SYSTEM,
    Entry,
    Formatter,
    TimeFormat,
    clean,
    default_time_format,
)
from imchat.tui.widgets import (
    ChatInput,
    ConversationList,
    ConversationView,
    MemberList,
    MessageLog,
    StatusBar,
)

ERROR = Style(color="red", bold=True)


@dataclass(frozen=True, slots=True)
class _KeyName:
    """Stands in for a ``textual.keys.Keys`` member: the parser only reads ``.value``."""

    value: str


def enable_alt_digits() -> None:
    """Deliver Esc+digit, which terminals send for Alt+digit, as ``alt+1`` … ``alt+9``.

    Textual turns those sequences into the characters macOS's Option+digit types (``¡``,
    ``™``, …), so an ``alt+1`` binding would never fire in a real terminal. A chat client
    wants Alt+N to switch windows, as in irssi and weechat.
    """
    from textual import _ansi_sequences

    # Declared a read-only Mapping, but it is the dict Textual looks sequences up in.
    keys = cast(dict[str, Any], _ansi_sequences.ANSI_SEQUENCES_KEYS)
    for n in range(1, 10):
        keys[f"\x1b{n}"] = (_KeyName(f"alt+{n}"),)


class ChatApp(App[None]):
    """A chat client for one user on one server."""

    # Absolute, so subclasses defined elsewhere (tests, benchmarks) find it too.
    CSS_PATH = Path(__file__).with_name("imchat.tcss")
    TITLE = "imchat"
    # Ctrl+P belongs to "previous conversation"; Ctrl+K is the usual chat-app switcher key.
    COMMAND_PALETTE_BINDING = "ctrl+k"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "cycle(1)", "Next chat", priority=True),
        Binding("ctrl+p", "cycle(-1)", "Prev chat", priority=True),
        *(
            Binding(f"alt+{n}", f"goto({n})", f"Chat {n}", show=False, priority=True)
            for n in range(1, 10)
        ),
        Binding("pageup", "page(-1)", "Older", show=False),
        Binding("pagedown", "page(1)", "Newer", show=False),
        Binding("ctrl+q", "quit_chat", "Quit", priority=True),
    ]

    current: reactive[ConvKey | None] = reactive(None)

    def __init__(
        self,
        session: ChatSession,
        *,
        server_label: str | None = None,
        time_format: TimeFormat = default_time_format,
        cursor_blink: bool = True,
    ) -> None:
        super().__init__()
        enable_alt_digits()
        self.session = session
        self.server_label = server_label or f"{session.host}:{session.port}"
        self.formatter = Formatter(session.nick, time_format)
        self.cursor_blink = cursor_blink
        self.views: dict[ConvKey, ConversationView] = {}
        self.titles: dict[ConvKey, str] = {}
        self._view_ids = 0
        self._motd: str | None = None
        self._want: ConvKey | None = None  # switch here once it exists (after /join)
        #: The session gave up for good (e.g. auth_failed): ``run_tui`` exits non-zero.
        self.failed = False

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(self.server_label, id="status")
        with Horizontal(id="main"):
            yield ConversationList(id="sidebar")
            yield ContentSwitcher(id="conversations")
            yield MemberList(id="members")
        yield ChatInput(self.nick_candidates, BY_NAME, id="input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sidebar").border_title = "conversations"
        self.query_one("#members").border_title = "members"
        status = self.query_one(StatusBar)
        status.nick = self.session.nick
        status.refresh_text()
        chat_input = self.query_one(ChatInput)
        chat_input.cursor_blink = self.cursor_blink
        chat_input.focus()
        self.session.add_listener(self._on_session_event)
        self.run_session()

    def _on_session_event(self, event: SessionEvent) -> None:
        self.post_message(SessionUpdate(event))

    @work(group="session", exclusive=True, exit_on_error=False)
    async def run_session(self) -> None:
        await self.session.run()

    # -- conversations ---------------------------------------------------------------------

    def view(self, key: ConvKey, title: str | None = None) -> ConversationView:
        """The view of ``key``, created (and listed in the sidebar) on first use."""
        view = self.views.get(key)
        if view is None:
            self._view_ids += 1
            view = ConversationView(key, id=f"conv-{self._view_ids}")
            self.views[key] = view
            conv = self.session.conversations.get(key)
            self.titles[key] = title or (conv.title if conv else key.name)
            # ContentSwitcher only hides the children it had when it started.
            view.display = False
            self.query_one("#conversations", ContentSwitcher).mount(view)
            self.query_one(ConversationList).ensure(key, self.titles[key])
            if self._motd and key.kind is ConvKind.ROOM:
                view.log_widget.append([self.formatter.system(None, self._motd)])
                self._motd = None
            if self.current is None or self._want == key:
                self._want = None
                self.current = key
        return view

    def current_view(self) -> ConversationView | None:
        return self.views.get(self.current) if self.current else None

    def watch_current(self, key: ConvKey | None) -> None:
        if key is None:
            return
        view = self.views[key]
        self.query_one("#conversations", ContentSwitcher).current = view.id
        # A Text title is never parsed as markup (a DM partner may be called "[b]").
        title = self.titles.get(key, key.name)
        self.query_one("#conversations").border_title = Text(clean(title))
        self.query_one(ConversationList).set_current(key)
        self.refresh_members()
        self.query_one(ChatInput).focus()

    def open(self, key: ConvKey) -> None:
        if key in self.views:
            self.current = key
        else:
            self._want = key

    @on(OpenConversation)
    def _open_conversation(self, message: OpenConversation) -> None:
        self.open(message.key)

    @on(OpenDirect)
    def _open_direct(self, message: OpenDirect) -> None:
        self.open_dm(message.nick)

    def open_dm(self, nick: str) -> ConvKey:
        key = self.session.open_dm(nick)
        self.view(key, nick)
        self.current = key
        if self.session.state is State.CONNECTED:
            self._net("history", self.session.load_dm_history(nick))
        return key

    def action_cycle(self, step: int) -> None:
        items = self.query_one(ConversationList).items
        if not items:
            return
        keys = [item.key for item in items]
        index = keys.index(self.current) if self.current in keys else 0
        self.current = keys[(index + step) % len(keys)]

    def action_goto(self, number: int) -> None:
        items = self.query_one(ConversationList).items
        if 1 <= number <= len(items):
            self.current = items[number - 1].key

    def action_page(self, step: int) -> None:
        view = self.current_view()
        if view is not None:
            if step < 0:
                view.log_widget.action_page_up()
            else:
                view.log_widget.action_page_down()

    def refresh_members(self) -> None:
        members = self.query_one(MemberList)
        status = self.query_one(StatusBar)
        key = self.current
        # Presence is only known while connected; otherwise nobody is shown as online.
        connected = self.session.state is State.CONNECTED
        online = set(self.session.online) if connected else set()
        me = self.session.nick
        topic = ""
        if key is None:
            names: Iterable[str] = ()
        elif key.kind is ConvKind.ROOM:
            info = self.session.rooms.get(key.name)
            names = info.members.values() if info else ()
            topic = info.topic if info else ""
            status.topic = f"#{key.name}" + (f": {topic}" if topic else "")
        elif key.kind is ConvKind.DM:
            names = {nick_key(me): me, key.name: self.titles.get(key, key.name)}.values()
            status.topic = f"direct messages with {self.titles.get(key, key.name)}"
        else:
            names = self.session.online.values()
            status.topic = "announcements"
        members.show(me, list(names), online)

    def nick_candidates(self) -> list[str]:
        names = list(self.session.online.values())
        for info in self.session.rooms.values():
            names.extend(info.members.values())
        names.extend(t for k, t in self.titles.items() if k.kind is ConvKind.DM)
        return names

    # -- session events --------------------------------------------------------------------

    @on(SessionUpdate)
    def _session_update(self, message: SessionUpdate) -> None:
        event = message.event
        if isinstance(event, MessagesAdded):
            self._messages_added(event)
        elif isinstance(event, ServerEvent):
            self._server_event(event.message)
        elif isinstance(event, OutboxChanged):
            view = self.view(event.conv)
            view.show_pending(
                [self.formatter.pending(p.text, action=p.action) for p in event.pending]
            )
        elif isinstance(event, SendFailed):
            self.error(
                f"not sent ({event.code}: {event.message}): {event.text}",
                self.views.get(event.conv),
            )
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, RoomJoined):
            self._room_joined(event)
        elif isinstance(event, RoomLeft):
            self._room_left(event.room)
        elif isinstance(event, HistoryReset):
            self._history_reset(event)
        elif isinstance(event, Welcomed):
            self.formatter.me = self.session.nick
            self.query_one(StatusBar).nick = self.session.nick
            motd = event.welcome.get("motd")
            if motd and self._motd is None and not self.views:
                self._motd = f"Message of the day: {clean(motd)}"

    def _history_reset(self, event: HistoryReset) -> None:
        """One line where the user looks: seqs were reused, nothing shown is taken back."""
        key = event.conv or self.current
        if key is None:
            return
        if event.conv is None:
            text = "the server's history was reset (a new store): what follows may repeat seqs"
        else:
            text = f"the server's history of this room was reset to message {event.last_seq}"
        view = self.view(key)
        view.log_widget.append([self.formatter.system(None, Text(text, style=SYSTEM))])

    def _state_changed(self, event: StateChanged) -> None:
        status = self.query_one(StatusBar)
        status.retry_at = event.retry_at
        status.reason = event.reason
        status.state = event.state
        if event.state is State.OFFLINE and event.reason and event.reason != "closed":
            self.failed = True
            self.error(f"disconnected: {event.reason}")
        self.refresh_members()

    def _room_joined(self, event: RoomJoined) -> None:
        key = ConvKey.room(event.room)
        view = self.view(key, f"#{event.room}")
        if event.rejoin:
            line = Text(f"reconnected: rejoined #{event.room}", style=SYSTEM)
        else:
            line = Text.assemble(Text(f"You joined #{event.room}", style=SYSTEM))
            if event.topic:
                line.append("  topic: ", style=SYSTEM)
                line.append(clean(event.topic))
        view.log_widget.append([self.formatter.system(None, line)])
        if self.current == key:
            self.refresh_members()

    def _room_left(self, room: str) -> None:
        key = ConvKey.room(room)
        view = self.views.pop(key, None)
        self.query_one(ConversationList).remove(key)
        if view is not None:
            view.remove()
        if self.current == key:
            items = self.query_one(ConversationList).items
            self.current = items[0].key if items else None
            if self.current is None:
                self.query_one(MemberList).show(self.session.nick, [], set())

    def _messages_added(self, event: MessagesAdded) -> None:
        view = self.view(event.conv)
        log = view.log_widget
        entries = [self.entry(item) for item in event.items]
        if event.prepend:
            log.loading_older = False
            log.history_complete = event.complete
            if event.complete:
                entries.insert(
                    0,
                    self.formatter.system(
                        None, f"— the beginning of {self.titles.get(event.conv, '')} —"
                    ),
                )
            log.prepend(entries)
            return
        log.append(entries)
        if event.initial:
            return
        me = nick_key(self.session.nick)
        news = [
            i for i in event.items if isinstance(i, dict) and nick_key(str(i.get("from", ""))) != me
        ]
        if not news:
            return
        attention = event.conv.kind is ConvKind.DM or any(e.meta.get("mention") for e in entries)
        self.query_one(ConversationList).bump(event.conv, len(news), attention=attention)
        if event.conv == ANNOUNCEMENTS:
            current = self.current_view()
            if current is not None and current is not view:
                current.log_widget.append([self.entry(i) for i in news])
            for item in news:
                self.notify(
                    f"{clean(item.get('from'))}: {clean(item.get('text'))}",
                    title="Announcement",
                    severity="warning",
                    timeout=8,
                    markup=False,
                )

    def entry(self, item: dict[str, Any] | Gap) -> Entry:
        if isinstance(item, Gap):
            return self.formatter.gap(item)
        return self.formatter.message(item)

    def _server_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        room = message.get("room")
        mine = nick_key(str(message.get("nick", ""))) == nick_key(self.session.nick)
        if kind == "joined" and mine:
            pass  # RoomJoined already said so, with the topic
        elif kind in ("joined", "parted", "topic") and isinstance(room, str):
            view = self.views.get(ConvKey.room(room))
            entry = self.formatter.event(message)
            if view is not None and entry is not None:
                view.log_widget.append([entry])
        if kind in ("joined", "parted", "topic", "online", "offline"):
            self.refresh_members()

    # -- input -----------------------------------------------------------------------------

    @on(Input.Submitted, "#input")
    def _submitted(self, event: Input.Submitted) -> None:
        chat_input = self.query_one(ChatInput)
        line = event.value
        chat_input.value = ""
        if not line.strip():
            return
        chat_input.remember(line)
        self.handle_line(line)

    @on(RunCommand)
    def _run_command(self, message: RunCommand) -> None:
        if message.line.endswith(" "):
            chat_input = self.query_one(ChatInput)
            chat_input.value = message.line
            chat_input.cursor_position = len(message.line)
            chat_input.focus()
        else:
            self.handle_line(message.line)

    def handle_line(self, line: str) -> None:
        command = parse(line)
        if command is None:
            self.send_text(line[1:] if line.startswith("//") else line)
            return
        name, args = command
        if name not in BY_NAME:
            self.error(f"unknown command {name}: type /help for the list")
            return
        getattr(self, f"cmd_{name[1:]}")(args)

    def send_text(self, text: str, *, action: bool = False) -> None:
        try:
            self._send_text(text, action=action)
        except NotConnected as exc:
            self.error(str(exc))

    def _send_text(self, text: str, *, action: bool = False) -> None:
        key = self.current
        if key is None:
            self.error("no conversation: /join a room or /msg someone first")
        elif key.kind is ConvKind.ROOM:
            self.session.say(key.name, text, action=action)
        elif key.kind is ConvKind.DM and not action:
            self.session.dm(self.titles.get(key, key.name), text)
        elif key.kind is ConvKind.DM:
            self.error("/me works in rooms only")
        else:
            self.error("this window is read-only; admins announce with /announce TEXT")

    def error(self, text: str, view: ConversationView | None = None) -> None:
        """Tell the user something went wrong: a toast, and a red line in the window."""
        text = clean(text)  # server messages are network text too
        self.notify(text, severity="error", markup=False)
        view = view or self.current_view()
        if view is not None:
            view.log_widget.append([self.formatter.system(None, Text(text, style=ERROR))])

    def info(self, lines: list[Text | str]) -> None:
        view = self.current_view()
        if view is None:
            for line in lines:
                self.notify(str(line), markup=False)
            return
        view.log_widget.append([self.formatter.system(None, line) for line in lines])

    def _net(self, what: str, coro: Awaitable[Any]) -> None:
        self.run_worker(self._guard(what, coro), group="net", exit_on_error=False)

    async def _guard(self, what: str, coro: Awaitable[Any]) -> None:
        """The one place where a failed network command becomes a message to the user."""
        try:
            await coro
        except ServerError as exc:
            self.error(f"{what}: {exc.code}: {exc.message}")
        except ProtocolError as exc:
            self.error(f"{what}: {exc.code}: {exc.message}")
        except NotConnected:
            self.error(f"{what}: not connected (state: {self.session.state})")
        except ConnectionClosed:
            self.error(f"{what}: the connection was lost")

    # -- commands --------------------------------------------------------------------------

    def _room_arg(self, args: str) -> str | None:
        if args:
            return args.split()[0]
        if self.current is not None and self.current.kind is ConvKind.ROOM:
            return self.current.name
        return None

    def cmd_join(self, args: str) -> None:
        if not args:
            self.error("usage: /join ROOM")
            return

        async def join() -> None:
            joined = await self.session.join(args.split()[0])
            self.open(ConvKey.room(joined.room))

        self._net("/join", join())

    def cmd_part(self, args: str) -> None:
        room = self._room_arg(args)
        if room is None:
            self.error("usage: /part ROOM (or use it in a room)")
            return
        self._net("/part", self.session.part(room))

    def cmd_msg(self, args: str) -> None:
        nick, _, text = args.partition(" ")
        if not nick or not is_valid_nick(nick):
            self.error("usage: /msg NICK [TEXT]")
            return
        self.open_dm(nick)
        if text.strip():
            self.send_text(text)

    def cmd_me(self, args: str) -> None:
        if not args:
            self.error("usage: /me ACTION")
            return
        self.send_text(args, action=True)

    def cmd_topic(self, args: str) -> None:
        key = self.current
        if key is None or key.kind is not ConvKind.ROOM:
            self.error("/topic works in rooms only")
            return
        if not args:
            info = self.session.rooms.get(key.name)
            topic = info.topic if info else ""
            self.info(
                [
                    Text.assemble(
                        Text(f"topic of #{key.name}: ", style=SYSTEM),
                        Text(clean(topic) or "(none)"),
                    )
                ]
            )
            return
        text = "" if args in ('""', "''", "-") else args
        self._net("/topic", self.session.request("topic", room=key.name, text=text))

    def cmd_users(self, args: str) -> None:
        async def users() -> None:
            reply = await self.session.request("users")
            nicks = sorted((str(n) for n in reply.get("users", [])), key=str.lower)
            self.info(
                [
                    Text.assemble(
                        Text(f"online ({len(nicks)}): ", style=SYSTEM),
                        Text(clean(", ".join(nicks))),
                    )
                ]
            )

        self._net("/users", users())

    def cmd_rooms(self, args: str) -> None:
        async def rooms() -> None:
            reply = await self.session.request("rooms")
            lines: list[Text | str] = [Text(f"{len(reply.get('rooms', []))} rooms:", style=SYSTEM)]
            for room in reply.get("rooms", []):
                line = Text.assemble(
                    Text(f"#{clean(room.get('room'))}", style="bold"),
                    Text(f"  {room.get('count', 0)} members", style=SYSTEM),
                )
                if room.get("topic"):
                    line.append("  " + clean(room.get("topic")))
                lines.append(line)
            self.info(lines)

        self._net("/rooms", rooms())

    def cmd_announce(self, args: str) -> None:
        if not args:
            self.error("usage: /announce TEXT")
            return
        try:
            self.session.announce(args)
        except NotConnected as exc:
            self.error(str(exc))

    def cmd_clear(self, args: str) -> None:
        view = self.current_view()
        if view is not None:
            view.log_widget.clear()

    def cmd_help(self, args: str) -> None:
        lines: list[Text | str] = [
            Text.assemble(Text(spec.usage.ljust(18), style="bold"), Text(spec.help, style=SYSTEM))
            for spec in COMMANDS
        ]
        lines.append(
            Text(
                "Plain text is said in the current window; start with // to say "
                "a line that begins with /.",
                style=SYSTEM,
            )
        )
        lines.append(Text(KEYS_HELP, style=SYSTEM))
        self.info(lines)

    def cmd_quit(self, args: str) -> None:
        self.action_quit_chat()

    def action_quit_chat(self) -> None:
        async def quit_chat() -> None:
            await self.session.close()
            self.exit()

        self.run_worker(quit_chat(), group="quit")

    @on(MessageLog.NeedOlder)
    def _need_older(self, message: MessageLog.NeedOlder) -> None:
        key = next((k for k, v in self.views.items() if v.log_widget is message.log), None)
        if key is None or self.session.state is not State.CONNECTED:
            return
        message.log.loading_older = True

        async def older() -> None:
            try:
                await self.session.load_older(key)
            finally:
                message.log.loading_older = False

        self._net("history", older())
