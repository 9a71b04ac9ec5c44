"""The one place where a protocol error code becomes an HTTP status.

Every error the HTTP face reports is a JSON object with the protocol's ``code`` and a
``message``, so a script handles ``imchat send`` and ``curl`` failures alike.
"""

from __future__ import annotations

import math
from http import HTTPStatus

from aiohttp import web

from imchat.protocol import ErrorCode

#: By code string: codes a newer protocol revision adds (``limit_reached``,
#: ``no_such_message``) map too, and an unknown one is the client's fault (400).
STATUS: dict[str, HTTPStatus] = {
    "bad_frame": HTTPStatus.BAD_REQUEST,
    "bad_request": HTTPStatus.BAD_REQUEST,
    "unknown_type": HTTPStatus.BAD_REQUEST,
    "bad_nick": HTTPStatus.BAD_REQUEST,
    "bad_room": HTTPStatus.BAD_REQUEST,
    "bad_text": HTTPStatus.BAD_REQUEST,
    "hello_required": HTTPStatus.UNAUTHORIZED,
    "auth_failed": HTTPStatus.UNAUTHORIZED,
    "forbidden": HTTPStatus.FORBIDDEN,
    "not_in_room": HTTPStatus.FORBIDDEN,
    "no_such_room": HTTPStatus.NOT_FOUND,
    "no_such_user": HTTPStatus.NOT_FOUND,
    "no_such_message": HTTPStatus.NOT_FOUND,
    "nick_taken": HTTPStatus.CONFLICT,
    "frame_too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "rate_limited": HTTPStatus.TOO_MANY_REQUESTS,
    "limit_reached": HTTPStatus.TOO_MANY_REQUESTS,
    "shutting_down": HTTPStatus.SERVICE_UNAVAILABLE,
    # The outcome is unknown and a retry with the same Idempotency-Key is safe: "try again".
    "internal": HTTPStatus.SERVICE_UNAVAILABLE,
}


def error_response(
    code: ErrorCode | str,
    message: str,
    *,
    retry_after: float | None = None,
    status: int | None = None,
) -> web.Response:
    """The JSON error for ``code``; 429 and 503 carry ``Retry-After`` (whole seconds).

    ``status`` overrides the code's own where HTTP knows better (415, 404 for a path).
    """
    if status is None:
        status = STATUS.get(str(code), HTTPStatus.BAD_REQUEST)
    headers: dict[str, str] = {}
    if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="imchat"'
    return web.json_response(
        {"code": str(code), "message": message}, status=status, headers=headers
    )


class ApiError(Exception):
    """Raised by request parsing in the HTTP layer; the middleware answers it."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status
        #: Answer with ``Connection: close`` (the request's body was not read to its end).
        self.close = close

    def response(self) -> web.Response:
        response = error_response(
            self.code, self.message, retry_after=self.retry_after, status=self.status
        )
        if self.close:
            response.force_close()
        return response
