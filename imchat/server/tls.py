"""The server's TLS context: modern protocol versions only, certificate and key from PEM files."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A context serving ``cert`` (a PEM chain, leaf first) with ``key``; TLS 1.2 or later.

    Raises ``OSError`` or ``ssl.SSLError`` if the files are missing or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
