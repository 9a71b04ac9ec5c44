"""Does a long conversation make typing lag? Measures the TUI with N messages in one room.

    .venv/bin/python benchmarks/tui_long_session.py [--messages 10000] [--keys 200] [--flood 1000]

Runs the real app headless (120x36) with the network replaced by events injected straight
into it, and reports:

* load: the time to add N messages to the open conversation (in history-sized batches);
* keystroke latency typing into the input with an empty log and with N messages: the wall
  time of ``pilot.press`` (which includes Pilot's own settling waits, a constant floor) and
  the CPU time the process spent on that key, the number that shows lag;
* typing while messages keep arriving (one live message per keystroke);
* a full repaint of the log scrolled to the middle;
* a flood: ``--flood`` messages arriving one by one in the open conversation (a frame every
  5), the process CPU per message, and how many times each widget was rendered (Textual's
  ``StylesCache.render_widget``): the log and its scrollbar change, the others should not.

The log keeps only row heights for all messages and renders just the visible rows, so the
numbers with N messages should match the empty ones within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from typing import Any

from textual._styles_cache import StylesCache
from textual.strip import Strip
from textual.widget import Widget

from imchat.client.session import ChatSession, ConvKey, MessagesAdded
from imchat.tui.app import ChatApp
from imchat.tui.messages import SessionUpdate

ROOM = ConvKey.room("lobby")
_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua alice"
)
WORDS = _LOREM.split()


class OfflineApp(ChatApp):
    """The app without its network loop: the benchmark plays the server."""

    def run_session(self) -> Any:  # type: ignore[override]
        return None


def message(seq: int) -> dict[str, Any]:
    length = 3 + (seq * 7) % 40  # some short lines, some that wrap
    text = " ".join(WORDS[(seq + i) % len(WORDS)] for i in range(length))
    return {
        "type": "msg",
        "room": "lobby",
        "seq": seq,
        "ts": 1_700_000_000 + seq,
        "from": f"user{seq % 17}",
        "text": text,
    }


async def keystrokes(pilot: Any, count: int, during: Any = None) -> tuple[list[float], list[float]]:
    """Wall time (including Pilot's own settling waits) and CPU time of each keypress."""
    wall, cpu = [], []
    for i in range(count):
        if during is not None:
            during(i)
        start, start_cpu = time.perf_counter(), time.process_time()
        await pilot.press("x")
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    pilot.app.query_one("#input").value = ""
    return wall, cpu


def summary(label: str, times: tuple[list[float], list[float]] | list[float]) -> str:
    wall, cpu = times if isinstance(times, tuple) else (times, None)
    ms = sorted(t * 1000 for t in wall)
    p95 = ms[int(len(ms) * 0.95) - 1]
    line = (
        f"{label:<34} median {statistics.median(ms):6.2f} ms   p95 {p95:6.2f} ms   "
        f"max {ms[-1]:6.2f} ms"
    )
    if cpu:
        line += f"   cpu median {statistics.median(cpu) * 1000:6.2f} ms"
    return line


async def flood(pilot: Any, first: int, count: int) -> tuple[float, Counter[str]]:
    """CPU seconds for ``count`` messages arriving one by one, and renders per widget."""
    app = pilot.app
    renders: Counter[str] = Counter()
    original = StylesCache.render_widget

    def render_widget(cache: StylesCache, widget: Widget, crop: Any) -> list[Strip]:
        renders[type(widget).__name__] += 1
        return original(cache, widget, crop)

    StylesCache.render_widget = render_widget  # type: ignore[method-assign]
    try:
        await pilot.pause()
        renders.clear()
        start = time.process_time()
        for seq in range(first, first + count):
            app.post_message(SessionUpdate(MessagesAdded(ROOM, (message(seq),))))
            if seq % 5 == 0:
                await pilot.pause()
        await pilot.pause()
        return time.process_time() - start, renders
    finally:
        StylesCache.render_widget = original  # type: ignore[method-assign]


async def main(n: int, keys: int, flood_count: int) -> None:
    session = ChatSession("alice", rooms=[])
    app = OfflineApp(session, server_label="bench")
    async with app.run_test(size=(120, 36)) as pilot:
        app.post_message(SessionUpdate(MessagesAdded(ROOM, (message(1),), initial=True)))
        await pilot.pause()
        log = app.views[ROOM].log_widget
        empty = await keystrokes(pilot, keys)

        start = time.perf_counter()
        seq = 2
        while seq <= n:
            batch = tuple(message(s) for s in range(seq, min(n, seq + 499) + 1))
            app.post_message(SessionUpdate(MessagesAdded(ROOM, batch)))
            seq += len(batch)
        await pilot.pause()
        while len(log.entries) < n:
            await pilot.pause()
        load = time.perf_counter() - start
        full = await keystrokes(pilot, keys)

        def live(i: int) -> None:
            app.post_message(SessionUpdate(MessagesAdded(ROOM, (message(n + 1 + i),))))

        streaming = await keystrokes(pilot, keys, during=live)

        flooded = await flood(pilot, n + keys + 1, flood_count)

        log.scroll_to(y=log.virtual_size.height // 2, animate=False, immediate=True)
        await pilot.pause()
        repaint = []
        for _ in range(20):
            log._strips.clear()
            start = time.perf_counter()
            for y in range(log.size.height):
                log.render_line(y)
            repaint.append(time.perf_counter() - start)

    print(
        f"messages in the conversation: {len(log.entries)} "
        f"({log.virtual_size.height} rows at width {log.size.width})"
    )
    print(f"{'load ' + str(n) + ' messages':<34} {load * 1000:8.1f} ms total")
    print(summary("keystroke, empty log", empty))
    print(summary(f"keystroke, {n} messages", full))
    print(summary(f"keystroke, {n} + 1 live msg/key", streaming))
    print(summary("repaint of the visible log (cold)", repaint))
    cpu, renders = flooded
    print(f"{'flood of ' + str(flood_count) + ', one by one':<34} cpu {cpu * 1000:8.1f} ms total")
    print(
        f"{'':<34} cpu {cpu * 1e6 / flood_count:8.1f} us a message; renders: "
        + ", ".join(f"{name} {count}" for name, count in renders.most_common())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--flood", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.keys, args.flood))
