"""TLS session resumption for the broker link.

A reconnect that offers the previous session's ticket (TLS 1.3, RFC 8446 §2.2) gets an abbreviated
handshake: no certificate chain, no key exchange over the metered link. A full handshake costs 1.5-4 kB
(the server's chain dominates); a resumed one a few hundred bytes. The broker decides: a stale or unknown
ticket simply gives a full handshake, with the same certificate checks as always.
"""

from __future__ import annotations

import ssl
from typing import Any


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it was told to remember on the next connect."""

    _saved: ssl.SSLSession | None = None

    def wrap_socket(self, sock: Any, *args: Any, session: ssl.SSLSession | None = None, **kwargs: Any) -> Any:
        return super().wrap_socket(sock, *args, session=session or self._saved, **kwargs)

    def remember(self, sock: Any) -> None:
        """Keep `sock`'s session for the next connect (call once the broker has answered on it)."""
        session = getattr(sock, "session", None)
        if session is not None and session.has_ticket:
            self._saved = session


def client_context(cafile: str | None) -> ResumingContext:
    """What `ssl.create_default_context(cafile=...)` gives a client, as a ResumingContext."""
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    if cafile:
        context.load_verify_locations(cafile=cafile)
    else:
        context.load_default_certs()
    return context
