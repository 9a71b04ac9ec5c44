"""``imchat web``: the terminal client in a browser, served by textual-serve.

Each browser tab gets its own ``imchat join`` process (textual-serve drives it through a
WebSocket), so the browser client is exactly the terminal one. Bound to a loopback address
it needs nothing more; bound anywhere else it refuses to start without a token, and every
request must carry it: once as ``?token=…`` (which sets an HttpOnly cookie) or the cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
import shlex
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

COOKIE = "imchat_web"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def join_command(
    nick: str, host: str, port: int, room: str | None, *, tls: bool, ca: str | None
) -> str:
    """The shell command each browser tab runs (credentials travel in the environment)."""
    args = [sys.executable, "-m", "imchat", "join", "--nick", nick, "--host", host]
    args += ["--port", str(port)]
    if room:
        args += ["--room", room]
    if tls:
        args.append("--tls")
    if ca:
        args += ["--ca", ca]
    return shlex.join(args)


def public_url(host: str, port: int) -> str:
    """What a browser should open: a wildcard address is no place to go, the host name is."""
    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class WebServer(Server):
    """textual-serve's server, with the origin check and the token check in front of every
    route."""

    def __init__(self, command: str, host: str, port: int, url: str, token: str | None) -> None:
        super().__init__(command, host=host, port=port, title="imchat", public_url=url)
        self.token = token
        self.origins = {urlsplit(url).netloc.lower()}
        #: On loopback without a token, the names this server may be reached by (any other
        #: Host is a DNS name rebound to 127.0.0.1 by someone else's page). None: any.
        self.hosts: set[str] | None = None
        if token is None and is_loopback(host):
            self.hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
            self.hosts |= self.origins

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._same_origin)
        if self.token is not None:
            app.middlewares.append(self._require_token)
        return app

    @web.middleware
    async def _same_origin(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Only this server's own page: a page of another site may open a WebSocket here
        (browsers allow it across origins and send the page's ``Origin``) and would drive
        the chat client as the user; on loopback, where no token is asked, a ``Host`` that
        is not one of this server's names is a DNS rebinding."""
        host = request.host.lower()
        origin = request.headers.get("Origin")
        foreign = origin is not None and urlsplit(origin).netloc.lower() not in (
            self.origins | {host}
        )
        if foreign or (self.hosts is not None and host not in self.hosts):
            return web.Response(
                status=403, text="imchat web: open it from its own address, not another site\n"
            )
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _require_token(self, request: web.Request, handler: Any) -> web.StreamResponse:
        assert self.token is not None
        expected = self.token.encode()
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), expected):
            response: web.StreamResponse = await handler(request)
            return response
        given = request.query.get("token", "")
        if given and hmac.compare_digest(given.encode(), expected):
            query = {k: v for k, v in request.query.items() if k != "token"}
            redirect = web.HTTPFound(request.rel_url.with_query(query))
            redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
            raise redirect
        return web.Response(
            status=401,
            text="imchat web: open the URL with ?token=… that `imchat web` printed\n",
        )
