"""Revision 3 in the TUI: replies, edits, deletes, reactions, typing, read markers, search.

:class:`FeatureApp` is a base of :class:`imchat.tui.app.ChatApp` holding everything this
adds (commands ``/reply`` ``/edit`` ``/delete`` ``/react`` ``/find``, Up on an empty input to
edit your last message, Escape to cancel a reply or edit), so the app itself only calls a
few hooks: :meth:`FeatureApp.feature_entry`, :meth:`FeatureApp.visible_items`,
:meth:`FeatureApp.intercept_send` and :meth:`FeatureApp.conversation_shown`.

State comes from :class:`imchat.client.features.Features` (created on the session before it
runs): edits, deletes and reactions are folded into the messages they target and those
entries are redrawn in place; read markers are sent when a conversation is on screen and,
when another of the user's sessions moves them, the unread counts here follow.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea

from imchat.client import ConnectionClosed, ServerError
from imchat.client.features import (
    FeatureEvent,
    Features,
    MarkerMoved,
    MarkersRestored,
    TargetsChanged,
    TypingNow,
    conv_of_message,
)
from imchat.client.session import (
    ChatSession,
    ConvKey,
    ConvKind,
    MessagesAdded,
    NotConnected,
    State,
)
from imchat.protocol import ProtocolError, nick_key
from imchat.tui.features_render import decorate, folded, snippet
from imchat.tui.read_marker import ReadMarkers
from imchat.tui.render import SYSTEM, Entry, Formatter, clean
from imchat.tui.widgets.chat_input import ChatInput
from imchat.tui.widgets.pickers import EMOJIS, ConfirmScreen, PickerScreen
from imchat.tui.widgets.typing_indicator import MODE, TypingIndicator

if TYPE_CHECKING:
    from imchat.tui.widgets import ConversationView, MessageLog

log = logging.getLogger(__name__)

#: Messages a picker offers (the newest of the conversation).
PICK_LAST = 30
#: Older pages fetched at most to reach a search result.
JUMP_PAGES = 20


class FeatureUpdate(Message):
    """A :class:`FeatureEvent` from the session's features, applied on the app's loop."""

    def __init__(self, event: FeatureEvent) -> None:
        super().__init__()
        self.event = event


class FeatureApp(App[None]):
    """The revision 3 half of the chat app (see the module docstring)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "edit_last(-1)", "Edit last", show=False, priority=True),
        Binding("down", "edit_last(1)", "Edit last", show=False, priority=True),
        Binding("escape", "cancel_mode", "Cancel", show=False, priority=True),
    ]

    # Provided by ChatApp.
    session: ChatSession
    read_markers: ReadMarkers
    formatter: Formatter
    views: dict[ConvKey, ConversationView]
    #: Conversations the user closed here (``/close``): a marker does not bring them back.
    closed: dict[ConvKey, ConversationView]
    view: Callable[..., ConversationView]
    _ensure_history: Callable[[ConvKey], None]
    current: Any  # a reactive ConvKey | None on ChatApp
    open: Callable[[ConvKey], None]
    open_dm: Callable[[str], ConvKey]

    def setup_features(self) -> None:
        """Call in ``__init__``, before the session runs: it must see every event."""
        self.chat_features = Features(self.session)
        self.chat_features.add_listener(self._post_feature_event)
        #: (conversation, seq) the next line answers, or is the new text of.
        self.replying: tuple[ConvKey, int] | None = None
        self.editing: tuple[ConvKey, int] | None = None
        #: Whether the read markers were restored once: the first time, the conversation on
        #: screen has its line placed (see :meth:`_markers_restored`).
        self.markers_restored_once = False
        #: DM conversations reopened at start from the partners of earlier runs: their
        #: history counts as unread after the marker, also when there is none (never read).
        self.remembered_dms: set[ConvKey] = set()

    def _post_feature_event(self, event: FeatureEvent) -> None:
        self.post_message(FeatureUpdate(event))

    # -- hooks called by ChatApp -----------------------------------------------------------

    def visible_items(self, event: MessagesAdded) -> MessagesAdded:
        """The event without edit/delete/reaction messages (they show in their targets)."""
        items = tuple(i for i in event.items if not folded(i))
        return event if len(items) == len(event.items) else dataclasses.replace(event, items=items)

    def feature_entry(self, message: dict[str, Any]) -> Entry:
        conv = conv_of_message(message, self.session.nick)
        return decorate(self.formatter, self.chat_features.book, conv, message)

    def intercept_send(self, text: str, *, action: bool) -> bool:
        """Send ``text`` as the pending reply or edit, if there is one (True if so)."""
        key = self.current
        if self.editing is not None and self.editing[0] == key:
            conv, seq = self.editing
            self._set_mode(None, None)
            self._feature_call("edit", self.chat_features.edit(conv, seq, text))
            return True
        if (
            self.replying is not None
            and self.replying[0] == key
            and key.kind is not ConvKind.ANNOUNCE
        ):
            conv, seq = self.replying
            self._set_mode(None, None)
            try:
                self.chat_features.reply(conv, text, seq, action=action)
            except NotConnected as exc:
                self.notify(str(exc), severity="error", markup=False)
            return True
        return False

    def conversation_shown(self, key: ConvKey) -> None:
        """A conversation came on screen: the "new since" line, its marker, who types."""
        marker = self.chat_features.markers.get(key)
        if marker is not None:
            self._place_read_marker(key, marker)
        if self.replying is not None and self.replying[0] != key:
            self._set_mode(None, None)
        if self.editing is not None and self.editing[0] != key:
            self._set_mode(None, None)
        self._show_typing()
        self._mark_read(key)

    def history_shown(self, key: ConvKey) -> None:
        """A conversation's first history arrived: if it is on screen, the "new since" line
        goes where the server's read marker says the reading stopped, before the history is
        marked read (not until the markers are restored: see :meth:`_markers_restored`)."""
        marker = self.chat_features.markers.get(key)
        if key == self.current and self.chat_features.restored and marker is not None:
            self._place_read_marker(key, marker)

    def _markers_restored(self) -> None:
        """The read markers of this connection arrived, after its history (the session
        fetches history before it is connected), and nothing was marked read meanwhile.
        After the start, the conversation on screen was opened before the markers were
        known: its line goes below the last message read. Then it is marked read. (After a
        reconnect, what came meanwhile arrived in front of the user: no line, as for any
        message that arrives while one looks.)"""
        first, self.markers_restored_once = not self.markers_restored_once, True
        key = self.current
        if key is None:
            return
        marker = self.chat_features.markers.get(key)
        if first and marker is not None:
            self._place_read_marker(key, marker)
        self._mark_read(key)

    def older_shown(self, key: ConvKey) -> None:
        """Older history was loaded above ``key``'s messages: the "new since" line that
        waited for the last message read to be shown may have its place now."""
        read = self.read_markers.waiting(key)
        if read is not None and key == self.current:
            self._place_read_marker(key, read)

    def _place_read_marker(self, key: ConvKey, read: int) -> None:
        """The read marker line above the first message after ``read`` from someone else."""
        first = next(
            (
                seq
                for seq, view in sorted(self.chat_features.book.views(key).items())
                if seq > read and nick_key(view.sender) != nick_key(self.session.nick)
            ),
            None,
        )
        view = self.views.get(key)
        if first is not None and view is not None:
            self.read_markers.place_before(key, view.log_widget, first, read=read)

    # -- feature events --------------------------------------------------------------------

    @on(FeatureUpdate)
    def _feature_update(self, message: FeatureUpdate) -> None:
        event = message.event
        if isinstance(event, TargetsChanged):
            for seq in event.seqs:
                self._redraw(event.conv, seq)
            if event.conv == self.current:
                self._mark_read(event.conv)
        elif isinstance(event, TypingNow):
            if event.conv == self.current:
                self._show_typing()
        elif isinstance(event, MarkerMoved):
            self._list_dm(event)
            self._unread_from_marker(event.conv)
        elif isinstance(event, MarkersRestored):
            self._markers_restored()

    def _list_dm(self, event: MarkerMoved) -> None:
        """A read marker names a DM stream this session does not list (the markers fetched
        at connect, or another session's ``mark``): list the conversation and fetch its
        recent history (its queued DMs may have gone to another session), so what came
        after the marker counts as unread (:meth:`history_counted`)."""
        key = event.conv
        if key.kind is ConvKind.DM and key not in self.views and key not in self.closed:
            self.view(key, event.peer or key.name)
            self._ensure_history(key)

    def history_counted(self, key: ConvKey) -> None:
        """A DM conversation's first history arrived off screen: with a read marker known
        (one listed from the markers), or for a partner of an earlier run (whose DMs may
        never have been read: no marker, all of them unread), what follows the marker is
        unread, and a DM unread wants attention as a new one does."""
        if key.kind is not ConvKind.DM or key == self.current:
            return
        if key not in self.chat_features.markers and key not in self.remembered_dms:
            return
        from imchat.tui.widgets import ConversationList

        self._unread_from_marker(key)
        sidebar = self.query_one(ConversationList)
        status = sidebar.get(key)
        if status is not None and status.unread and not status.attention:
            status.attention = True
            sidebar.refresh_items()

    def _redraw(self, conv: ConvKey, seq: int) -> None:
        view = self.views.get(conv)
        if view is None:
            return
        log_widget: MessageLog = view.log_widget
        index = log_widget.index_of_seq(seq)
        if index is None:
            return
        message = log_widget.entries[index].meta.get("message")
        if isinstance(message, dict):
            log_widget.replace(index, self.feature_entry(message))

    def _unread_from_marker(self, conv: ConvKey) -> None:
        """Another session (or a restore at connect) moved the marker: recount unread."""
        from imchat.tui.widgets import ConversationList

        sidebar = self.query_one(ConversationList)
        status = sidebar.get(conv)
        if status is None or conv == self.current:
            return
        status.unread = self.chat_features.unread(conv)
        if not status.unread:
            status.attention = False
        sidebar.refresh_items()

    def _mark_read(self, key: ConvKey) -> None:
        # Not before the markers are restored: the line has to know where reading stopped.
        if (
            self.session.state is not State.CONNECTED
            or not self.is_running
            or not self.chat_features.restored
        ):
            return
        conv = self.session.conversations.get(key)
        last = conv.last_seq if conv is not None else None
        if last and last > self.chat_features.markers.get(key, 0):
            self.run_worker(self._quietly(self.chat_features.mark(key, last)), group="mark")

    async def _quietly(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except (ServerError, NotConnected, ConnectionClosed, ProtocolError) as exc:
            log.info("feature request failed: %s", exc)

    def _show_typing(self) -> None:
        key = self.current
        indicator = self.query_one(TypingIndicator)
        indicator.set_typing(self.chat_features.typing_in(key) if key is not None else ())

    # -- input: typing notifications, modes ------------------------------------------------

    @on(TextArea.Changed, "#input")
    def _input_changed(self, event: TextArea.Changed) -> None:
        key = self.current
        text = event.text_area.text
        if (
            key is None
            or not text
            or text.startswith("/")
            or self.session.state is not State.CONNECTED
        ):
            return
        self.run_worker(self._quietly(self.chat_features.typing(key)), group="typing")

    def _set_mode(
        self, replying: tuple[ConvKey, int] | None, editing: tuple[ConvKey, int] | None
    ) -> None:
        self.replying, self.editing = replying, editing
        mode: Text | None = None
        target = replying or editing
        if target is not None:
            view = self.chat_features.book.view(*target)
            who = clean(view.sender) if view else "?"
            what = snippet(view.text, 40) if view else ""
            verb = "replying to" if replying else "editing your message"
            mode = Text.assemble(
                Text(f"{verb} ", style=MODE),
                Text(f"{who}: {what}" if replying else what, style=SYSTEM),
                Text("  (Esc cancels)", style=SYSTEM),
            )
        self.query_one(TypingIndicator).show(mode=mode)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "edit_last":
            chat_input = self.query_one("#input", ChatInput)
            if self.focused is not chat_input:
                return False
            if self.editing is not None:
                return True  # Up/Down leave the edit and recall as usual
            return (
                parameters == (-1,)
                and not chat_input.value
                and self._last_own(self.current) is not None
            )
        if action == "cancel_mode":
            return self.replying is not None or self.editing is not None
        return True

    def _last_own(self, key: ConvKey | None) -> int | None:
        if key is None:
            return None
        me = nick_key(self.session.nick)
        own = [
            seq
            for seq, view in self.chat_features.book.views(key).items()
            if nick_key(view.sender) == me and not view.deleted
        ]
        return max(own) if own else None

    def action_edit_last(self, step: int) -> None:
        """Up on an empty input: edit your last message here. Up/Down while editing: leave
        the edit. Either way the input's own recall moves on as for any Up/Down."""
        chat_input = self.query_one("#input", ChatInput)
        editing = self.editing is not None
        chat_input.action_recall(step)
        if editing:
            self._set_mode(None, None)
            return
        key = self.current
        seq = self._last_own(key)
        if key is not None and seq is not None:
            self._start_edit(key, seq)

    def action_cancel_mode(self) -> None:
        self._set_mode(None, None)

    def _start_edit(self, key: ConvKey, seq: int) -> None:
        view = self.chat_features.book.view(key, seq)
        if view is None:
            return
        chat_input = self.query_one("#input", ChatInput)
        chat_input.value = view.text  # the cursor goes to the end
        self._set_mode(None, (key, seq))

    # -- commands (dispatched by ChatApp.handle_line as cmd_<name>) ------------------------

    def _pick(self, title: str, key: ConvKey, *, own_only: bool, then: Any) -> None:
        me = nick_key(self.session.nick)
        choices: list[tuple[Text, int]] = []
        for seq, view in sorted(self.chat_features.book.views(key).items())[-PICK_LAST * 4 :]:
            if view.deleted or (own_only and nick_key(view.sender) != me):
                continue
            label = Text.assemble(
                Text(f"#{seq} ", style=SYSTEM),
                Text(clean(view.sender), style="bold"),
                Text(": " + snippet(view.text)),
            )
            choices.append((label, seq))
        choices = choices[-PICK_LAST:]
        if not choices:
            self.notify("no message to choose here", severity="warning")
            return
        self.push_screen(PickerScreen(title, choices), then)

    def _here(self) -> ConvKey | None:
        key: ConvKey | None = self.current
        if key is None:
            self.notify("open a conversation first", severity="warning")
        return key

    def cmd_reply(self, args: str) -> None:
        key = self._here()
        if key is None:
            return
        if key.kind is ConvKind.ANNOUNCE:
            self.notify("announcements take no replies", severity="warning")
            return

        def chosen(seq: int | None) -> None:
            if seq is not None:
                self._set_mode((key, seq), None)
                self.query_one("#input", ChatInput).focus()

        self._pick("Reply to which message?", key, own_only=False, then=chosen)

    def cmd_edit(self, args: str) -> None:
        key = self._here()
        if key is None:
            return

        def chosen(seq: int | None) -> None:
            if seq is not None:
                self._start_edit(key, seq)

        self._pick("Edit which of your messages?", key, own_only=True, then=chosen)

    def cmd_delete(self, args: str) -> None:
        key = self._here()
        if key is None:
            return

        def chosen(seq: int | None) -> None:
            view = self.chat_features.book.view(key, seq) if seq is not None else None
            if seq is None or view is None:
                return
            question = Text.assemble(
                Text("Delete this message for everyone?\n", style="bold"),
                Text(f"{clean(view.sender)}: {snippet(view.text)}"),
            )

            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._feature_call("delete", self.chat_features.delete(key, seq))

            self.push_screen(ConfirmScreen(question), confirmed)

        admin = bool(getattr(self.session, "admin", False))
        self._pick("Delete which message?", key, own_only=not admin, then=chosen)

    def cmd_react(self, args: str) -> None:
        key = self._here()
        if key is None:
            return
        emoji = args.strip()

        def chosen(seq: int | None) -> None:
            if seq is None:
                return
            if emoji:
                self._feature_call("react", self.chat_features.toggle_reaction(key, seq, emoji))
                return
            # Drawn without the emoji glue (VS16) terminals measure unlike Rich; the
            # first emoji is the default, not the last.
            choices = [(Text(clean(e)), i) for i, e in enumerate(EMOJIS)]

            def picked(index: int | None) -> None:
                if index is not None:
                    call = self.chat_features.toggle_reaction(key, seq, EMOJIS[index])
                    self._feature_call("react", call)

            question = "Which reaction? (again takes it back)"
            self.push_screen(PickerScreen(question, choices, start=0), picked)

        self._pick("React to which message?", key, own_only=False, then=chosen)

    def cmd_find(self, args: str) -> None:
        if not args.strip():
            self.notify("usage: /find WORDS", severity="warning")
            return

        async def find() -> None:
            hits, more = await self.chat_features.search(args)
            if not hits:
                self.notify(f"nothing found for {clean(args)}", markup=False)
                return
            labels = []
            for index, hit in enumerate(hits):
                ts = hit.message.get("ts")
                stamp = self.formatter.time_format(float(ts)) if isinstance(ts, int | float) else ""
                where = (
                    f"#{hit.conv.name}"
                    if hit.conv.kind is ConvKind.ROOM
                    else (hit.conv.name if hit.conv.kind is ConvKind.DM else "announcements")
                )
                labels.append(
                    (
                        Text.assemble(
                            Text(f"{stamp} {clean(where)} ", style=SYSTEM),
                            Text(clean(hit.message.get("from", "")), style="bold"),
                            Text(": " + snippet(str(hit.message.get("text", "")))),
                        ),
                        index,
                    )
                )
            title = f"{len(hits)} found for {clean(args)}" + (
                " (more not searched)" if more else ""
            )

            def jump(index: int | None) -> None:
                if index is not None:
                    hit = hits[index]
                    target = (
                        hit.message.get("target") if hit.message.get("kind") == "edit" else None
                    )
                    seq = target if isinstance(target, int) else hit.seq
                    self.run_worker(self._jump(hit.conv, seq), group="jump")

            self.push_screen(PickerScreen(title, labels), jump)

        self._feature_call("/find", find())

    async def _jump(self, key: ConvKey, seq: int) -> None:
        """Open ``key`` and bring message ``seq`` on screen, loading older pages if needed."""
        open_ = self.open
        if key.kind is ConvKind.ROOM and key.name not in self.session.rooms:
            await self.session.join(key.name)
        elif key.kind is ConvKind.DM and key not in self.views:
            self.open_dm(key.name)
        open_(key)
        for _ in range(JUMP_PAGES):
            view = self.views.get(key)
            if view is not None:
                index = view.log_widget.index_of_seq(seq)
                if index is not None:
                    self.current = key
                    view.log_widget.scroll_to_entry(index)
                    return
            if not await self.session.load_older(key):
                break
        self.notify("that message is no longer in the history", severity="warning")

    def _feature_call(self, what: str, coro: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except (ServerError, ProtocolError) as exc:
                self.notify(f"{what}: {exc.code}: {exc.message}", severity="error", markup=False)
            except NotConnected:
                self.notify(f"{what}: not connected", severity="error")
            except ConnectionClosed:
                self.notify(f"{what}: the connection was lost", severity="error")

        self.run_worker(guarded(), group="features", exit_on_error=False)
