"""Key bindings of a text widget run when the key arrives, not after the keys behind it.

Textual runs a widget's bindings only once the key has bubbled up to the app, after the
keys that followed it in the same read (tmux send-keys, a fast typist) were already typed:
``Backspace 1`` would type ``1`` and then delete it. A widget that edits text calls
:func:`run_binding_now` from its ``_on_key`` so every key takes effect in arrival order.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget


async def run_binding_now(widget: Widget, event: events.Key) -> bool:
    """Run ``widget``'s own binding for ``event``'s key now; True if it has one.

    Priority bindings are the app's and are skipped. A binding whose action declines (e.g.
    Ctrl+C with nothing selected in the widget) lets the key go on to the screen.
    """
    for binding in widget._bindings.key_to_bindings.get(event.key, ()):
        if binding.priority:
            continue
        if await widget.app.run_action(binding.action, widget):
            event.stop()
            event.prevent_default()
        return True
    return False
