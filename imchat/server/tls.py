"""The server's TLS context: modern protocol versions only, certificate and key from PEM files."""

from __future__ import annotations

import errno
import ssl
from pathlib import Path

#: OpenSSL's reasons for a key that is not the certificate's (by OpenSSL version and order).
_MISMATCH = {"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"}


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A context serving ``cert`` (a PEM chain, leaf first) with ``key``; TLS 1.2 or later.

    Raises ``OSError`` or ``ssl.SSLError`` if the files are missing or do not match, with a
    message naming the file and the fault: ``load_cert_chain``'s own say neither
    (``[Errno 2] No such file or directory``, ``[SSL] PEM lib``).
    """
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise FileNotFoundError(errno.ENOENT, f"TLS {what} file not found", str(path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason in _MISMATCH:
            fault = f"the key in {key} does not match the certificate in {cert}"
        elif "PEM" in str(exc):
            fault = f"{cert} must hold a PEM certificate chain and {key} its PEM private key"
        else:
            fault = f"{cert} with {key}: {exc}"
        raise ssl.SSLError(exc.errno, f"TLS: {fault}") from exc
    except OSError as exc:  # unreadable (permissions): name both files
        raise OSError(exc.errno, f"TLS certificate {cert} or key {key}: {exc.strerror}") from exc
    return context
