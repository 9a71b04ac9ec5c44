"""TLS for clients: verify the server's certificate, against the system's CAs or a private one."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca: Path | None = None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name (never optional).

    ``ca`` (a PEM file) replaces the system's trust store: a server with a certificate from a
    private CA is trusted, and nothing else is.
    """
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_tls_error(exc: ssl.SSLError, where: str) -> str:
    """A one-line reason for a failed handshake, for command-line clients."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "certificate verification failed"
        return (
            f"TLS: the certificate of {where} is not trusted ({reason}); use --ca for a private CA"
        )
    if exc.reason == "WRONG_VERSION_NUMBER":
        # What OpenSSL makes of a first answer that is no TLS record: a plain imchat port's
        # error frame, or an HTTP answer.
        return (
            f"TLS handshake with {where} failed: the server does not answer in TLS there "
            "(a plain port? then connect without --tls)"
        )
    return f"TLS handshake with {where} failed: {exc.reason or exc}"
