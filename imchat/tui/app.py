"""The imchat Textual app: wires a :class:`ChatSession` to the widgets.

All network work runs in workers (the session's own loop, and one worker per command) and
every failure of those is reported by :meth:`ChatApp._guard`, in one place. Session events
arrive as :class:`SessionUpdate` messages and are applied in order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Input

from imchat.client import ConnectionClosed, ServerError
from imchat.client.session import (
    ANNOUNCEMENTS,
    OLDER_HISTORY,
    ChatSession,
    ConvKey,
    ConvKind,
    Gap,
    HistoryFailed,
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
    dm_partner,
)
from imchat.protocol import (
    ProtocolError,
    Rooms,
    Topic,
    Users,
    is_valid_nick,
    nick_key,
    normalize_room,
)
from imchat.tui.backfill import load as load_backfill
from imchat.tui.backfill import wants_older
from imchat.tui.commands import BY_NAME, COMMANDS, KEYS_HELP, ChatCommands, parse
from imchat.tui.config import TuiConfig
from imchat.tui.dm_peers import DmPeers
from imchat.tui.features import FeatureApp
from imchat.tui.fold import PresenceFold
from imchat.tui.hotlist import hotlist, totals
from imchat.tui.messages import OpenConversation, OpenDirect, RunCommand, SessionUpdate
from imchat.tui.notify import Notifier
from imchat.tui.palette import ConversationCommands, screenshot_command
from imchat.tui.read_marker import ReadMarkers
from imchat.tui.render import (
    SYSTEM,
    Entry,
    Formatter,
    TimeFormat,
    clean,
    default_date_format,
    default_time_format,
    one_line,
)
from imchat.tui.screens import Ask, Confirm
from imchat.tui.search import ScrollbackSearch
from imchat.tui.widgets import (
    ChatInput,
    ConversationList,
    ConversationView,
    MemberList,
    MessageLog,
    SearchBar,
    StatusBar,
)
from imchat.tui.widgets.typing_indicator import TypingIndicator

ERROR = Style(color="red", bold=True)
#: Below this many columns the side panes collapse; below TINY only the conversation stays.
NARROW = 100
TINY = 60
#: A folded join/part line that grows is redrawn at most this often (seconds).
FOLD_REDRAW = 0.1
#: How much of a refused message an error line quotes.
QUOTE = 60
#: Seconds an error toast stays when there is no conversation to write it into: a day.
LASTING_TOAST = 86400.0


def quote(text: str, limit: int = QUOTE) -> str:
    """A refused message as an error line quotes it: one line, at most ``limit`` characters."""
    one_line = " ".join(text.split())
    if len(one_line) <= limit:
        return one_line
    return f"{one_line[: limit - 1]}… ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class _KeyName:
    """Stands in for a ``textual.keys.Keys`` member: the parser only reads ``.value``."""

    value: str


def enable_alt_digits() -> None:
    """Deliver Esc+digit, which terminals send for Alt+digit, as ``alt+0`` … ``alt+9``.

    Textual turns those sequences into the characters macOS's Option+digit types (``¡``,
    ``™``, …), so an ``alt+1`` binding would never fire in a real terminal. A chat client
    wants Alt+N to switch windows, as in irssi and weechat.
    """
    from textual import _ansi_sequences

    # Declared a read-only Mapping, but it is the dict Textual looks sequences up in.
    keys = cast(dict[str, Any], _ansi_sequences.ANSI_SEQUENCES_KEYS)
    for n in range(10):
        keys[f"\x1b{n}"] = (_KeyName(f"alt+{n}"),)


class ChatApp(FeatureApp):
    """A chat client for one user on one server."""

    # Absolute, so subclasses defined elsewhere (tests, benchmarks) find it too.
    CSS_PATH = Path(__file__).with_name("imchat.tcss")
    TITLE = "imchat"
    # Ctrl+P belongs to "previous conversation"; Ctrl+K is the usual chat-app switcher key.
    COMMAND_PALETTE_BINDING = "ctrl+k"
    COMMANDS = App.COMMANDS | {ChatCommands, ConversationCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        # First, so that a narrow footer still shows how to bring the panes back.
        Binding("f2", "toggle_pane('sidebar')", "Chats", priority=True),
        Binding("f3", "toggle_pane('members')", "Members", priority=True),
        Binding("ctrl+n", "cycle(1)", "Next chat", priority=True),
        Binding("ctrl+p", "cycle(-1)", "Prev chat", priority=True),
        *(
            Binding(
                f"alt+{n}",
                f"goto({n})",
                f"Chat {n}",
                show=False,
                priority=True,
                tooltip=f"jump to conversation {n}",
            )
            for n in range(1, 10)
        ),
        Binding(
            "alt+0",
            "goto(10)",
            "Chat 10",
            show=False,
            priority=True,
            tooltip="jump to conversation 10",
        ),
        Binding("ctrl+f", "search", "Search", tooltip="search this conversation", priority=True),
        # Priority: the input (a TextArea) would take them to move its cursor.
        Binding("pageup", "page(-1)", "Older", show=False, priority=True),
        Binding("pagedown", "page(1)", "Newer", show=False, priority=True),
        Binding("ctrl+q", "quit_chat", "Quit", priority=True),
    ]

    #: The input's cursor blinks unless told otherwise (tests turn it off for stable screens).
    CURSOR_BLINK: ClassVar[bool] = True

    current: reactive[ConvKey | None] = reactive(None)

    def __init__(
        self,
        session: ChatSession,
        *,
        server_label: str | None = None,
        time_format: TimeFormat | None = None,
        date_format: TimeFormat = default_date_format,
        clock: Callable[[], float] = time.time,
        cursor_blink: bool | None = None,
        config: TuiConfig | None = None,
        dm_peers: DmPeers | None = None,
    ) -> None:
        super().__init__()
        enable_alt_digits()
        self.session = session
        self.server_label = server_label or f"{session.host}:{session.port}"
        self.config = config or TuiConfig()
        look = self.config.appearance
        if time_format is None:
            time_format = default_time_format
            if look.time_format != "%H:%M":
                time_format = lambda ts: time.strftime(look.time_format, time.localtime(ts))  # noqa: E731
        self.formatter = Formatter(session.nick, time_format, date_format=date_format, clock=clock)
        self.formatter.mention_style = Style(bgcolor=look.mention)
        self.search_style = Style(bgcolor=look.search, bold=True)
        self.scrollback = ScrollbackSearch(self.search_style)
        self.theme = look.theme
        self.notifier = Notifier(self.config.notify, self._write_terminal)
        self.read_markers = ReadMarkers()
        #: Closed conversations keep their view (and what it showed) until reopened.
        self.closed: dict[ConvKey, ConversationView] = {}
        self.last_screenshot: Path | None = None
        #: The reason the connection went, kept for the whole outage (the first reason is
        #: the one worth reading: "shutting_down", not the "connection refused" after it).
        self._outage: tuple[float, str] | None = None
        self._members_due = False
        self.cursor_blink = self.CURSOR_BLINK if cursor_blink is None else cursor_blink
        self.views: dict[ConvKey, ConversationView] = {}
        self.titles: dict[ConvKey, str] = {}
        self._view_ids = 0
        self._motd: str | None = None
        self._want: ConvKey | None = None  # switch here once it exists (after /join)
        #: The session gave up for good (e.g. auth_failed): ``run_tui`` exits non-zero.
        self.failed = False
        #: DM partners seen in earlier runs, listed again at start (see dm_peers.py).
        self.dm_peers = dm_peers if dm_peers is not None else DmPeers()
        self._peers_noted: set[ConvKey] = set()
        self.setup_features()  # revision 3: see imchat.tui.features

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(self.server_label, id="status")
        with Horizontal(id="main"):
            yield ConversationList(id="sidebar")
            yield ContentSwitcher(id="conversations")
            yield MemberList(id="members")
        yield TypingIndicator(id="typing")
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
        self._reopen_remembered_dms()
        self.run_session()

    def _reopen_remembered_dms(self) -> None:
        """Open a DM conversation in the session for every partner of earlier runs: their
        recent history comes at connect with the rest, and one with messages is listed,
        with what follows the read marker unread (see dm_peers.py), although a DM nobody
        read left no marker to list it by."""
        session = self.session
        for peer in self.dm_peers.get(session.host, session.port, session.nick):
            self.remembered_dms.add(session.open_dm(peer))

    def _note_dm_peer(self, event: MessagesAdded) -> None:
        """Remember a DM partner for the next start (once per conversation and run)."""
        key = event.conv
        if key.kind is not ConvKind.DM or key in self._peers_noted:
            return
        message = next((item for item in event.items if isinstance(item, dict)), None)
        if message is None:
            return
        self._peers_noted.add(key)
        session = self.session
        peer = dm_partner(message, session.nick)
        self.dm_peers.add(session.host, session.port, session.nick, peer)

    # -- adapting to the terminal's size ------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        screen = self.default_screen  # not a dialog that happens to be open
        narrow, tiny = width < NARROW, width < TINY
        if narrow != screen.has_class("-narrow") or tiny != screen.has_class("-tiny"):
            screen.set_class(narrow, "-narrow")
            screen.set_class(tiny, "-tiny")

    def action_toggle_pane(self, pane: str) -> None:
        """F2 / F3: show a collapsed side pane, or hide one that has room."""
        screen = self.default_screen
        if not screen.has_class("-narrow"):
            screen.toggle_class(f"-hide-{pane}")
            return
        screen.toggle_class(f"-show-{pane}")
        if screen.has_class("-tiny"):  # room for one pane beside the conversation
            other = "members" if pane == "sidebar" else "sidebar"
            screen.remove_class(f"-show-{other}")

    def _on_session_event(self, event: SessionEvent) -> None:
        self.post_message(SessionUpdate(event))

    @work(group="session", exclusive=True, exit_on_error=False)
    async def run_session(self) -> None:
        await self.session.run()

    # -- conversations ---------------------------------------------------------------------

    def view(self, key: ConvKey, title: str | None = None) -> ConversationView:
        """The view of ``key``, created (and listed in the sidebar) on first use."""
        view = self.views.get(key)
        if view is None and key in self.closed:
            view = self.views[key] = self.closed.pop(key)
            self.query_one(ConversationList).ensure(key, self.titles[key])
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
                self._append(view, [self.formatter.system(None, self._motd)])
                self._motd = None
            if self.current is None or self._want == key:
                self._want = None
                self.current = key
        return view

    def current_view(self) -> ConversationView | None:
        return self.views.get(self.current) if self.current else None

    def watch_current(self, old: ConvKey | None, key: ConvKey | None) -> None:
        if old is not None and old != key:
            self.read_markers.left(old)
            self.close_search()
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
        self.conversation_shown(key)
        self._ensure_history(key)

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
        self._ensure_history(key)
        return key

    def _ensure_history(self, key: ConvKey) -> None:
        """A DM conversation whose history was never fetched (opened with /msg, listed from
        the server's read markers, or either of those while offline and now on screen)
        gets its recent history."""
        if key.kind is not ConvKind.DM or self.session.state is not State.CONNECTED:
            return
        conv = self.session.conversations.get(key)
        if conv is None or (conv.last_seq is None and not conv.syncing):
            self._net("history", self.session.load_dm_history(self.titles.get(key, key.name)))

    def _backfill(self, key: ConvKey) -> None:
        """Once per conversation, with its first messages: a log opened by a live message
        gets the older history above it (see backfill.py). A load that failed is asked
        for again here, at the next messages or the next connect."""
        view = self.views.get(key)
        conv = self.session.conversations.get(key)
        if (
            view is None
            or view.backfilled
            or conv is None
            or conv.syncing
            or self.session.state is not State.CONNECTED
            or view.log_widget.loading_older
        ):
            return  # decided later: at the next messages, or when connected
        view.backfilled = True
        if not wants_older(conv, view.log_widget):
            return

        async def older() -> None:
            view.backfilled = await load_backfill(self.session, key)

        self._loading_older(view.log_widget, older())

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
            self._note_dm_peer(event)
            self._messages_added(event)
            if event.conv == self.current:
                if event.initial:
                    self.history_shown(event.conv)  # the "new since" line first
                self._mark_read(event.conv)  # what arrives in front of the user is read
            elif event.initial:
                self.history_counted(event.conv)
            if not event.prepend:
                self._backfill(event.conv)
        elif isinstance(event, ServerEvent):
            self._server_event(event.message)
        elif isinstance(event, OutboxChanged):
            view = self.view(event.conv)
            view.show_pending(
                [self.formatter.pending(p.text, action=p.action) for p in event.pending]
            )
        elif isinstance(event, SendFailed):
            self.error(
                f"not sent ({event.code}: {event.message}): {quote(event.text)}",
                self.views.get(event.conv),
            )
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, RoomJoined):
            self._room_joined(event)
        elif isinstance(event, RoomLeft):
            self._room_left(event.room, elsewhere=event.elsewhere)
        elif isinstance(event, HistoryReset):
            self._history_reset(event)
        elif isinstance(event, HistoryFailed):
            self._history_failed(event)
        elif isinstance(event, Welcomed):
            self.formatter.me = self.session.nick
            self.query_one(StatusBar).nick = self.session.nick
            max_text = event.welcome.get("max_text")
            if isinstance(max_text, int) and max_text > 0:
                self.query_one(ChatInput).max_text = max_text
            motd = event.welcome.get("motd")
            if motd and self._motd is None and not self.views:
                self._motd = f"Message of the day: {clean(motd)}"

    def _history_failed(self, event: HistoryFailed) -> None:
        """The server refused a conversation's history. A listed one shows why its log lacks
        it. A DM partner of an earlier run is listed now, not at the next connect that gets
        its history: its DMs may be unread, and the user should see the conversation and
        why it is empty (a partner the server no longer knows, ``no_such_user`` after a new
        store, is left out, as one whose stream is empty is). The history is asked for again
        when the conversation is opened, with its next message, and at the next connect."""
        key = event.conv
        if key not in self.views:
            if key not in self.remembered_dms or event.code == "no_such_user":
                return
            self.view(key)
        self.error(
            f"history not loaded ({event.code}: {event.message}); "
            "asked again when opened or on reconnect",
            self.views[key],
            toast=False,
        )

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
        self._append(view, [self.formatter.system(None, Text(text, style=SYSTEM))])

    def _state_changed(self, event: StateChanged) -> None:
        status = self.query_one(StatusBar)
        status.retry_at = event.retry_at
        self._log_outage(event)
        # The first reason of an outage stays on the bar; later connect errors follow it.
        reason = event.reason
        if self._outage is not None and event.state is State.RECONNECTING:
            first = self._outage[1]
            reason = first if reason in (None, first) else f"{first}; then {reason}"
        status.reason = reason
        status.state = event.state
        if event.state is State.CONNECTED:
            for key in list(self.views):
                self._backfill(key)
            if self.current is not None:
                self._ensure_history(self.current)
        if event.state is State.OFFLINE and event.reason and event.reason != "closed":
            self.failed = True
            if event.reason.startswith("nick_taken"):
                self._ask_for_nick(event.reason)
            else:
                self.error(f"disconnected: {event.reason}")
        self.refresh_members()

    def _log_outage(self, event: StateChanged) -> None:
        """Write when the connection went (and why) and when it came back into the log."""
        now = self.formatter.clock()
        if event.state is State.RECONNECTING and event.reason and self._outage is None:
            self._outage = (now, event.reason)
            self._system_everywhere(Text(f"disconnected: {clean(event.reason)}", style=ERROR))
        elif event.state is State.CONNECTED and self._outage is not None:
            began, _ = self._outage
            self._outage = None
            self._system_everywhere(
                Text(f"reconnected after {_duration(now - began)}", style=SYSTEM)
            )

    def _system_everywhere(self, line: Text) -> None:
        for view in self.views.values():
            self._append(view, [self.formatter.system(None, line)])

    def _ask_for_nick(self, reason: str) -> None:
        """The nick is taken: offer to pick another instead of leaving an empty window."""

        def answered(nick: str | None) -> None:
            if nick is None:
                self.exit()
                return
            if not is_valid_nick(nick):
                self._ask_for_nick(f"bad_nick: {nick!r} is not a valid nick")
                return
            self.failed = False
            self.session.nick = nick
            self.formatter.me = nick
            self.query_one(StatusBar).nick = nick
            self.run_session()

        self.push_screen(
            Ask(f"{clean(reason)}\nPick another nick:", f"{self.session.nick}_"), answered
        )

    def _room_joined(self, event: RoomJoined) -> None:
        key = ConvKey.room(event.room)
        view = self.view(key, f"#{event.room}")
        line: Text | None = None
        if not event.rejoin:
            line = Text.assemble(Text(f"You joined #{event.room}", style=SYSTEM))
            if event.topic:
                line.append("  topic: ", style=SYSTEM)
                line.append(one_line(event.topic))
        elif self._outage is None:  # else "reconnected after ..." follows everywhere
            line = Text(f"reconnected: rejoined #{event.room}", style=SYSTEM)
        if line is not None:
            self._append(view, [self.formatter.system(None, line)])
        if self.current == key:
            self.refresh_members()

    def _room_left(self, room: str, *, elsewhere: bool = False) -> None:
        key = ConvKey.room(room)
        view = self.views.pop(key, None)
        self.query_one(ConversationList).forget(key)
        if view is not None:
            view.remove()
        if self.current == key:
            items = self.query_one(ConversationList).items
            self.current = items[0].key if items else None
            if self.current is None:
                self.query_one(MemberList).show(self.session.nick, [], set())
            if elsewhere:
                # The window changed under the user's hands: say so where they look, or
                # the line being typed for the room goes here without a word.
                note = f"you left #{room} in another session: what you type now goes here"
                self.notify(note, markup=False, timeout=6)
                self.info([note])

    def _messages_added(self, event: MessagesAdded) -> None:
        view = self.view(event.conv)
        event = self.visible_items(event)
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
            log.prepend(self._dated(entries, None, before=view))
            self.older_shown(event.conv)
            return
        if event.initial and not any(e.meta.get("seq") for e in log.entries):
            # Recent history goes above "You joined" (and any other notice so far): the
            # newest lines are the last ones, where the view opens.
            last_day = view.last_day
            log.prepend(self._dated(entries, None, before=view))
            view.last_day = last_day or view.last_day
            return
        me = nick_key(self.session.nick)
        news = [
            i for i in event.items if isinstance(i, dict) and nick_key(str(i.get("from", ""))) != me
        ]
        if news and not event.initial:
            self._settle_fold(log)
            self.read_markers.arriving(event.conv, log, looking=self.looking_at(event.conv))
        self._append(view, entries)
        if event.initial or not news:
            return
        attention = event.conv.kind is ConvKind.DM or any(e.meta.get("mention") for e in entries)
        self.query_one(ConversationList).bump(event.conv, len(news), attention=attention)
        self._notify_news(event.conv, event.items, entries)
        if event.conv == ANNOUNCEMENTS:
            current = self.current_view()
            if current is not None and current is not view:
                self._append(current, [self.entry(i) for i in news])
            for item in news:
                self.notify(
                    f"{clean(item.get('from'))}: {clean(item.get('text'))}",
                    title="Announcement",
                    severity="warning",
                    timeout=8,
                    markup=False,
                )

    # -- notifications, hotlist, title -----------------------------------------------------

    def looking_at(self, key: ConvKey) -> bool:
        """Whether the user sees ``key`` now: it is in front and the terminal has focus."""
        return key == self.current and self.app_focus

    def _notify_news(
        self, key: ConvKey, items: Sequence[dict[str, Any] | Gap], entries: list[Entry]
    ) -> None:
        me = nick_key(self.session.nick)
        looking = self.looking_at(key)
        for item, entry in zip(items, entries, strict=True):
            if isinstance(item, Gap) or nick_key(str(item.get("from", ""))) == me:
                continue
            kind = self.notifier.message(
                key,
                str(item.get("from", "?")),
                str(item.get("text", "")),
                mention=bool(entry.meta.get("mention")),
                looking=looking,
            )
            if kind is not None:
                break  # one bell and one notification per batch is enough

    def _write_terminal(self, data: str) -> None:
        """Raw output to the terminal (bell, notifications, title); nothing when headless."""
        driver = self._driver
        if driver is not None and not self.is_headless:
            driver.write(data)

    @on(ConversationList.ActivityChanged)
    def _activity_changed(self) -> None:
        items = self.query_one(ConversationList).items
        self.query_one(StatusBar).hotlist = hotlist(items)
        unread, attention = totals(items)
        self.notifier.title(unread, attention, f"{self.session.nick} @ {self.server_label}")

    def on_app_blur(self) -> None:
        if self.current is not None:
            self.read_markers.left(self.current)

    def entry(self, item: dict[str, Any] | Gap) -> Entry:
        if isinstance(item, Gap):
            return self.formatter.gap(item)
        return self.feature_entry(item)

    def _append(self, view: ConversationView, entries: list[Entry]) -> None:
        """Append to a view's log, with a day separator before each new day's first line."""
        self._settle_fold(view.log_widget)
        view.log_widget.append(self._dated(entries, view))

    def _dated(
        self,
        entries: list[Entry],
        view: ConversationView | None,
        *,
        before: ConversationView | None = None,
    ) -> list[Entry]:
        """``entries`` with day separators; ``view`` holds the day they follow on from,
        ``before`` the view they are prepended to (its first day needs no new separator)."""
        last = view.last_day if view is not None else None
        out: list[Entry] = []
        for entry in entries:
            day = entry.meta.get("day")
            if day is not None and day != last:
                out.append(self.formatter.day_separator(day))
                last = day
            out.append(entry)
        if view is not None:
            view.last_day = last
        if before is not None:
            log = before.log_widget
            head = log.entries[0] if log.entries else None
            if head is not None and last is not None and head.meta.get("separator") == last:
                log.replace(0, None)  # the older batch ends on the day the log began with
            if before.last_day is None:
                before.last_day = last
        return out

    def _server_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        room = message.get("room")
        nick = str(message.get("nick", ""))
        mine = nick_key(nick) == nick_key(self.session.nick)
        if kind == "joined" and mine:
            pass  # RoomJoined already said so, with the topic
        elif kind in ("joined", "parted") and isinstance(room, str):
            view = self.views.get(ConvKey.room(room))
            if view is not None:
                self._fold_presence(view, room, str(kind), nick, message)
        elif kind == "topic" and isinstance(room, str):
            view = self.views.get(ConvKey.room(room))
            entry = self.formatter.event(message)
            if view is not None and entry is not None:
                self._append(view, [entry])
        if kind in ("joined", "parted", "topic", "online", "offline"):
            self._members_later()

    def _fold_presence(
        self, view: ConversationView, room: str, kind: str, nick: str, message: dict[str, Any]
    ) -> None:
        """Joins and parts in a row share one line, updated in place (see fold.py)."""
        log = view.log_widget
        last = log.entries[-1] if log.entries else None
        fold = last.meta.get("fold") if last is not None else None
        if kind == "parted" and not isinstance(fold, PresenceFold):
            # Joined, spoke and left at once (imchat send --room): the message is enough.
            for index in range(len(log.entries) - 1, max(-1, len(log.entries) - 6), -1):
                entry = log.entries[index]
                earlier = entry.meta.get("fold")
                if isinstance(earlier, PresenceFold):
                    if earlier.forget_join(nick):
                        log.replace(index, None if earlier.empty else self._fold_entry(earlier))
                        return
                    break
                if entry.meta.get("from") != nick_key(nick):
                    break
        if isinstance(fold, PresenceFold) and last is not None:
            fold.add(kind, nick)
            fold.last_event = message
            self._redraw_fold_later(log, last)
            return
        fold = PresenceFold(room)
        fold.add(kind, nick)
        self._append(view, [self._fold_entry(fold, message)])

    def _redraw_fold_later(self, log: MessageLog, entry: Entry) -> None:
        """Redraw a folded line that grew, at most every FOLD_REDRAW seconds: a storm of
        joins grows it hundreds of times a second, and each redraw repaints the log."""
        if entry.meta.get("redraw_due"):
            return
        entry.meta["redraw_due"] = True

        self.set_timer(FOLD_REDRAW, lambda: self._redraw_fold(log, entry))

    def _redraw_fold(self, log: MessageLog, entry: Entry) -> None:
        index = log.index_of(entry)  # None: redrawn meanwhile
        fold = entry.meta.get("fold")
        if index is not None and isinstance(fold, PresenceFold) and entry.meta.get("redraw_due"):
            log.replace(index, None if fold.empty else self._fold_entry(fold))

    def _settle_fold(self, log: MessageLog) -> None:
        """Before anything goes below a folded line that is due a redraw, redraw it now: it
        can no longer grow, and a later change of its height would shift the lines below."""
        if log.entries and log.entries[-1].meta.get("redraw_due"):
            self._redraw_fold(log, log.entries[-1])

    def _fold_entry(self, fold: PresenceFold, message: dict[str, Any] | None = None) -> Entry:
        """The folded line, timed by the latest event in it."""
        if message is not None:
            fold.last_event = message
        entry = self.formatter.system(fold.last_event, fold.text())
        entry.meta["fold"] = fold
        return entry

    def _members_later(self) -> None:
        """Refresh the member list once for a burst of presence events, not once each."""
        if not self._members_due:
            self._members_due = True
            self.set_timer(0.25, self._members_now)

    def _members_now(self) -> None:
        self._members_due = False
        with contextlib.suppress(NoMatches):  # the app closed meanwhile
            self.refresh_members()

    # -- input -----------------------------------------------------------------------------

    @on(ChatInput.Submitted, "#input")
    def _submitted(self, event: ChatInput.Submitted) -> None:
        chat_input = event.chat_input
        line = event.value  # the input was already cleared, in order, when Enter arrived
        if not line.strip():
            return
        chat_input.remember(line)
        max_text = chat_input.max_text
        if parse(line) is None and len(line) > max_text:
            # Refused here, not by the server: the text goes back into the input to shorten.
            if not chat_input.text:
                chat_input.value = line
            # No toast: it would cover the input, whose border already shows the count.
            self.error(f"too long to send: {len(line)} characters, at most {max_text}", toast=False)
            return
        self.handle_line(line)
        view = self.current_view()
        if view is not None:
            view.log_widget.follow()

    @on(ChatInput.JumpToBottom)
    def _jump_to_bottom(self) -> None:
        view = self.current_view()
        if view is not None:
            view.log_widget.follow()

    @on(ChatInput.LongPaste)
    def _long_paste(self, message: ChatInput.LongPaste) -> None:
        lines = message.text.count("\n") + 1

        def answered(insert: bool | None) -> None:
            if insert:
                self.query_one(ChatInput).insert(message.text)

        self.push_screen(
            Confirm(
                f"Paste {lines} lines ({len(message.text)} characters) into the input?",
                "y / Enter: paste (then Enter sends it as one message)    n / Esc: drop it",
            ),
            answered,
        )

    @on(RunCommand)
    def _run_command(self, message: RunCommand) -> None:
        if message.line.endswith(" "):
            chat_input = self.query_one(ChatInput)
            chat_input.value = message.line
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
        max_text = self.query_one(ChatInput).max_text
        if len(text) > max_text:  # /me and /msg NICK TEXT; plain lines are caught earlier
            self.error(f"too long to send: {len(text)} characters, at most {max_text}")
            return
        try:
            self._send_text(text, action=action)
        except NotConnected as exc:
            self.error(str(exc))

    def _send_text(self, text: str, *, action: bool = False) -> None:
        key = self.current
        if key is not None and self.intercept_send(text, action=action):
            return
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

    def error(self, text: str, view: ConversationView | None = None, *, toast: bool = True) -> None:
        """Tell the user something went wrong: a red line in the window, and a short toast
        (the full line is in the log; a toast as long as the error would cover the input)."""
        text = clean(text)  # server messages are network text too
        view = view or self.current_view()
        if toast or view is None:
            # With no conversation for the red line (a login refused at the first connect),
            # the toast is all there is: it stays until the user acts.
            timeout = 4 if view is not None else LASTING_TOAST
            self.notify(quote(text, 120), severity="error", markup=False, timeout=timeout)
        if view is not None:
            self._append(view, [self.formatter.system(None, Text(text, style=ERROR))])

    def info(self, lines: list[Text | str]) -> None:
        view = self.current_view()
        if view is None:
            for line in lines:
                self.notify(str(line), markup=False)
            return
        self._append(view, [self.formatter.system(None, line) for line in lines])

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
        try:
            room = normalize_room(args)
        except ProtocolError:
            self.error(f"not a room name: {args!r} (up to 64 of a-z 0-9 _ - .)")
            return

        async def join() -> None:
            joined = await self.session.join(room)
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
        self._net("/topic", self.session.request(Topic(room=key.name, text=text)))

    def cmd_close(self, args: str) -> None:
        key = self.current
        if key is None:
            self.error("no window to close")
        elif key.kind is ConvKind.ROOM:
            self.cmd_part(key.name)  # leaving the room closes its window
        else:
            self.close_conversation(key)

    def close_conversation(self, key: ConvKey) -> None:
        """Hide a DM or the announcements; a new message (or /msg) brings it back as it was."""
        view = self.views.pop(key, None)
        if view is None:
            return
        self.closed[key] = view
        conversations = self.query_one(ConversationList)
        index = conversations.index_of(key) or 0
        conversations.forget(key)
        items = conversations.items
        if self.current == key:
            self.current = items[min(index, len(items) - 1)].key if items else None
            if self.current is None:
                self.query_one(MemberList).show(self.session.nick, [], set())

    def cmd_goto(self, args: str) -> None:
        count = len(self.query_one(ConversationList).items)
        if not args.isdigit() or not 1 <= int(args) <= count:
            self.error(f"usage: /goto N, N from 1 to {count}")
            return
        self.action_goto(int(args))

    def cmd_window(self, args: str) -> None:
        self.cmd_goto(args)

    def cmd_search(self, args: str) -> None:
        self.action_search(args)

    def cmd_users(self, args: str) -> None:
        async def users() -> None:
            reply = await self.session.request(Users())
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
            reply = await self.session.request(Rooms())
            lines: list[Text | str] = [Text(f"{len(reply.get('rooms', []))} rooms:", style=SYSTEM)]
            for room in reply.get("rooms", []):
                line = Text.assemble(
                    Text(f"#{clean(room.get('room'))}", style="bold"),
                    Text(f"  {room.get('count', 0)} members", style=SYSTEM),
                )
                if room.get("topic"):
                    line.append("  " + one_line(room.get("topic")))
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
        """Quit; with messages still waiting to be sent, ask first (they would be lost)."""
        unsent = len(self.session.outbox)
        if unsent and not isinstance(self.screen, Confirm):
            noun = "message is" if unsent == 1 else "messages are"

            def answered(quit_anyway: bool | None) -> None:
                if quit_anyway:
                    self._quit_now()

            self.push_screen(
                Confirm(f"{unsent} {noun} not sent yet and would be lost. Quit anyway?"),
                answered,
            )
            return
        self._quit_now()

    def _quit_now(self) -> None:
        async def quit_chat() -> None:
            await self.session.close()
            self.exit()

        self.run_worker(quit_chat(), group="quit")

    # -- search ----------------------------------------------------------------------------

    def action_search(self, query: str | None = None) -> None:
        """Open the search bar (Ctrl+F); while open, Ctrl+F steps to the next older hit."""
        if self.current_view() is None:
            self.error("no conversation to search")
            return
        bars = self.query(SearchBar)
        if bars and query is None and bars.first().display:
            self._search_label(self.scrollback.step(older=True))
            return
        bar = bars.first() if bars else SearchBar(id="search")
        if not bars:
            self.mount(bar, before=self.query_one(ChatInput))
        bar.display = True
        bar.focus()
        if query is not None:
            bar.value = query  # Input.Changed runs the search

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        view = self.current_view()
        self._search_label(self.scrollback.run(view.log_widget if view else None, event.value))

    @on(SearchBar.Step)
    def _search_step(self, message: SearchBar.Step) -> None:
        self._search_label(self.scrollback.step(message.older))

    def _search_label(self, label: str) -> None:
        for bar in self.query(SearchBar):
            bar.border_title = label

    @on(SearchBar.Closed)
    def close_search(self) -> None:
        self.scrollback.clear()
        for bar in self.query(SearchBar):
            bar.display = False
            bar.value = ""
        self.query_one(ChatInput).focus()

    # -- screenshot ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        def later() -> None:
            # After the palette has closed, so it is not in the picture.
            self.set_timer(0.1, self.action_save_screenshot)

        return screenshot_command(super().get_system_commands(screen), later)

    def action_save_screenshot(self) -> None:
        """Save an SVG of the screen into the configured directory, and say where."""
        directory = self.config.screenshot_dir
        name = time.strftime("imchat-%Y%m%d-%H%M%S.svg")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = self.save_screenshot(name, str(directory))
        except OSError as exc:
            self.error(f"screenshot not saved: {directory}: {exc.strerror or exc}")
            return
        self.last_screenshot = Path(path)
        self.info([Text(f"screenshot saved: {path}", style=SYSTEM)])
        self.notify(f"saved to {path}", title="Screenshot", markup=False)

    @on(MessageLog.NeedOlder)
    def _need_older(self, message: MessageLog.NeedOlder) -> None:
        key = next((k for k, v in self.views.items() if v.log_widget is message.log), None)
        if key is not None:
            self._load_older(key, message.log, OLDER_HISTORY)

    def _load_older(self, key: ConvKey, log: MessageLog, limit: int) -> None:
        """One page of history before the first message shown (none while one loads)."""
        if log.loading_older or self.session.state is not State.CONNECTED:
            return
        self._loading_older(log, self._guard("history", self.session.load_older(key, limit)))

    def _loading_older(self, log: MessageLog, load: Awaitable[None]) -> None:
        """Run ``load`` in the background with ``log`` marked as loading older history
        meanwhile (from now: no second load starts before this one ends)."""
        log.loading_older = True

        async def loading() -> None:
            try:
                await load
            finally:
                log.loading_older = False

        self.run_worker(loading(), group="net", exit_on_error=False)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
