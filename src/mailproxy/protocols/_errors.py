"""Protocol errors shared by every protocol module.

Owns: ``ProtocolError`` and its two sides. Imports nothing from the rest of the package.
(cf. h11 ``_util.py``: ``RemoteProtocolError(msg, error_status_hint)`` carries the reply;
wsproto's ``RemoteProtocolError(msg, event_hint=...)``.)
"""

from __future__ import annotations

__all__ = ["ProtocolError", "RemoteProtocolError", "LocalProtocolError"]


class ProtocolError(Exception):
    """Base class of the protocol errors. Never raised itself."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise RemoteProtocolError or LocalProtocolError instead")
        super().__init__(msg)
        self.msg = msg


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (or a limit).

    ``reply`` is the exact bytes to send to the peer before acting on ``close`` (may be
    ``b""``: Dovecot closes some connections without a word). ``close`` says whether the
    session ends after the reply. A connection that raised this stays in its ``ERROR``
    state.
    """

    def __init__(self, msg: str, *, reply: bytes = b"", close: bool = True) -> None:
        super().__init__(msg)
        if not isinstance(reply, bytes):
            raise TypeError("reply must be bytes")
        self.reply = reply
        self.close = close


class LocalProtocolError(ProtocolError):
    """Our own code misused the API (wrong state, invalid event)."""
