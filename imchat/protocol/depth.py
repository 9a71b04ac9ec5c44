"""How deeply a JSON document nests, measured on its bytes before it is decoded.

The decoder recurses once per level, so a frame of ``[[[[…`` a thousand deep raises
``RecursionError`` inside it. Measuring first turns such a frame into ``bad_frame`` at a
bounded, linear cost and keeps the decoder away from deep input altogether.
"""

from __future__ import annotations

import re

#: Deepest nesting the protocol accepts: the outer object is level 1 (contract, *rev 2*).
MAX_DEPTH = 32

_OPENERS = frozenset(b"[{")
#: An escape (only strings may hold one): removed first, so no quote is left escaped and a
#: string is then simply two quotes and what lies between. Both patterns match in linear
#: time, whatever the input (a pattern matching escapes inside strings would not).
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
#: Every byte that is not a bracket, for ``bytes.translate`` to delete.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def exceeds_depth(payload: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """True if ``payload`` opens more than ``max_depth`` arrays/objects inside each other.

    Only the brackets outside strings count; a document that is not JSON at all is left to the
    decoder to refuse. Frames with few brackets (nearly all) are answered without a scan.
    """
    if payload.count(b"[") + payload.count(b"{") <= max_depth:
        return False
    unescaped = _ESCAPE.sub(b"", payload)
    brackets = _STRING.sub(b"", unescaped).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False
