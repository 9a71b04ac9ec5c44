"""``CHATHISTORY`` (draft/chathistory) on the native ``history`` request.

``msgid`` references are the stream's ``seq`` and map onto ``after``/``before``; native history
pages by ``seq``, so ``timestamp`` references filter one page of at most 500 messages.
"""

from __future__ import annotations

from typing import Any

from imchat.protocol import ErrorCode, ProtocolError

from . import translate as tr
from .base import CHATHISTORY_MAX, CommandBase
from .lines import Line, format_parts


class History(CommandBase):
    async def on_chathistory(self, line: Line) -> None:
        sub = line.param(0).upper()
        if sub == "TARGETS":
            await self.history_targets(line)
            return
        if sub not in ("LATEST", "BEFORE", "AFTER", "BETWEEN"):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Unknown subcommand", sub or "*"))
            return
        target = line.param(1)
        refs = line.params[2:-1]
        try:
            limit = min(int(line.params[-1]), CHATHISTORY_MAX)
        except (ValueError, IndexError):
            limit = 0
        if not target or limit < 1 or len(refs) != (2 if sub == "BETWEEN" else 1):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Bad parameters", sub))
            return
        stream: dict[str, Any] = {"room": target} if target.startswith("#") else {"with": target}
        parsed = [_ref(r) for r in refs]
        if any(p is None for p in parsed) or (sub != "LATEST" and refs[0] == "*"):
            self.out(tr.fail("CHATHISTORY", "INVALID_PARAMS", "Bad message reference", sub))
            return
        body: dict[str, Any] = {"type": "history", **stream, "limit": limit}
        by_time: list[tuple[str, float]] = []
        ok_refs = [p for p in parsed if p is not None]
        if sub == "BETWEEN" and ok_refs[0][0] == ok_refs[1][0] and ok_refs[0][1] > ok_refs[1][1]:
            ok_refs.reverse()  # BETWEEN may name its bounds in either order
        for (kind, value), role in zip(ok_refs, _roles(sub), strict=False):
            if kind == "timestamp" or (kind == "msgid" and sub == "LATEST"):
                # LATEST wants the newest messages after the reference: filter the latest page.
                by_time.append((role, value) if kind == "timestamp" else ("after_seq", value))
            elif kind == "msgid":
                body[role] = int(value)
        if by_time:
            body["limit"] = CHATHISTORY_MAX  # filter one page by time (see docs/irc.md)
        reply = await self.s.ask(body)
        if isinstance(reply, ProtocolError):
            code = (
                "INVALID_TARGET"
                if reply.code
                in (
                    ErrorCode.NO_SUCH_ROOM,
                    ErrorCode.NO_SUCH_USER,
                    ErrorCode.BAD_ROOM,
                    ErrorCode.BAD_NICK,
                )
                else "MESSAGE_ERROR"
            )
            self.out(tr.fail("CHATHISTORY", code, reply.message, sub, target))
            return
        messages: list[dict[str, Any]] = list(reply.get("messages", []))
        for role, ts in by_time:
            if role == "after_seq":
                messages = [m for m in messages if m.get("seq", 0) > ts]
            elif role == "after":
                messages = [m for m in messages if m.get("ts", 0) > ts]
            else:
                messages = [m for m in messages if m.get("ts", 0) < ts]
        if by_time:
            keep_first = sub in ("AFTER", "BETWEEN")
            messages = messages[:limit] if keep_first else messages[-limit:]
        self.emit_history(target, messages)

    async def history_targets(self, line: Line) -> None:
        lo, hi = (_ref(r) for r in (line.param(1), line.param(2)))
        if lo is None or hi is None or lo[0] != "timestamp" or hi[0] != "timestamp":
            self.out(
                tr.fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS needs timestamps", "TARGETS")
            )
            return
        low, high = sorted((float(lo[1]), float(hi[1])))
        found: list[tuple[float, str]] = []
        for room in sorted(self.channels):
            reply = await self.s.ask({"type": "history", "room": room, "limit": 1})
            if isinstance(reply, ProtocolError) or not reply.get("messages"):
                continue
            ts = float(reply["messages"][-1].get("ts", 0))
            if low < ts < high:
                found.append((ts, "#" + room))
        batch = self.new_batch() if "batch" in self.s.caps else None
        if batch is not None:
            self.out(format_parts("BATCH", ["+" + batch, "draft/chathistory-targets"], tr.SERVER))
        tags = {"batch": batch} if batch is not None else {}
        for ts, target in sorted(found):
            stamp = "timestamp=" + tr.iso_time(ts)
            self.out(format_parts("CHATHISTORY", ["TARGETS", target, stamp], tr.SERVER, tags))
        if batch is not None:
            self.out(format_parts("BATCH", ["-" + batch], tr.SERVER))


def _roles(sub: str) -> list[str]:
    return {"LATEST": ["after"], "BEFORE": ["before"], "AFTER": ["after"]}.get(
        sub, ["after", "before"]
    )


def _ref(text: str) -> tuple[str, float] | None:
    """``msgid=12`` / ``timestamp=…`` / ``*`` to (kind, value)."""
    if text == "*":
        return ("none", 0.0)
    kind, _, value = text.partition("=")
    if kind == "msgid" and value.isdigit():
        return ("msgid", float(value))
    if kind == "timestamp":
        ts = tr.parse_iso_time(value)
        return None if ts is None else ("timestamp", ts)
    return None
