"""The server's HTTP face (``imchat server --http-port``): an HTTP API for scripts and
services, webhooks, the native protocol over WebSocket, ``/healthz`` and ``/metrics``.

Everything runs in the server's event loop on aiohttp and goes through the hub like a native
session, so the protocol's rules and limits hold here unchanged. See docs/http.md.
"""

from .app import HttpFrontend

__all__ = ["HttpFrontend"]
