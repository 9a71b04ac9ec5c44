"""The protocol's error codes and the one exception that carries them.

Every failure the server reports to a client is a :class:`ProtocolError`; the code it carries
is the code the client sees, so each fault maps to its code in exactly one place (the place
that raises it).
"""

from __future__ import annotations

from enum import StrEnum

RequestId = str | int


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    HELLO_REQUIRED = "hello_required"
    BAD_NICK = "bad_nick"
    NICK_TAKEN = "nick_taken"
    AUTH_FAILED = "auth_failed"
    FORBIDDEN = "forbidden"
    BAD_ROOM = "bad_room"
    NO_SUCH_ROOM = "no_such_room"
    NOT_IN_ROOM = "not_in_room"
    NO_SUCH_USER = "no_such_user"
    BAD_TEXT = "bad_text"
    RATE_LIMITED = "rate_limited"
    SLOW_CONSUMER = "slow_consumer"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    # Revision 3: a target or reply_to that names no stored plain/action message.
    NO_SUCH_MESSAGE = "no_such_message"
    #: *rev 2*: a quota was reached (rooms per user, queued DMs per recipient, replies).
    LIMIT_REACHED = "limit_reached"
    # Not in the contract's list: the contract names the idle timeout as fatal without naming
    # a code, and a client deserves to be told why it was closed.
    IDLE_TIMEOUT = "idle_timeout"


#: Codes after which the server closes the connection.
FATAL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.AUTH_FAILED,
        ErrorCode.SLOW_CONSUMER,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.IDLE_TIMEOUT,
    }
)


class ProtocolError(Exception):
    """A fault reported to the peer as ``{"type":"error","code":…,"message":…}``.

    ``request_id`` is the id of the request at fault, when it had a valid one; the error reply
    then echoes it. ``retry_after`` (seconds, for ``rate_limited``) tells the client when the
    request may succeed; the reply carries it as an extension field.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: RequestId | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES

    def with_id(self, request_id: RequestId | None) -> ProtocolError:
        self.request_id = request_id
        return self
