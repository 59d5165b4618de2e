"""IMAP string encoding the way Dovecot's ``lib-imap/imap-quote.c`` writes it.

Owns: ``imap_string`` (quoted or synchronizing literal, ``imap_append_string``),
``imap_nstring`` (adds NIL), ``imap_quoted`` (``imap_append_quoted``: always quoted,
CR/LF/8-bit dropped). Used by ``forwarding`` (ID arguments) and ``imap`` (LOGIN, ID reply).
Imports nothing but ``_errors``.

Injection safety: a quoted string never contains CR, LF or NUL and escapes ``"``/``\\``;
anything with CR/LF/8-bit goes out as a literal whose length is exact, so the peer can
never mistake value bytes for a new command. NUL cannot be sent at all (RFC 3501 CHAR8
excludes it; Dovecot's C strings cannot hold one) and raises ``ValueError``.
"""

from __future__ import annotations

import re

__all__ = ["imap_string", "imap_nstring", "imap_quoted", "to_bytes"]

# Dovecot QUOTED_MAX_ESCAPE_CHARS: after more than 4 quoted-specials a literal is shorter.
_QUOTED_MAX_ESCAPE_CHARS = 4
_NEEDS_LITERAL = frozenset(b"\r\n") | frozenset(range(0x80, 0x100))
_PLAIN = re.compile(rb'[^\x00\r\n"\\\x80-\xff]*')   # quoted as is, no escaping


def to_bytes(value: str | bytes) -> bytes:
    """str → UTF-8 (``surrogateescape``, so bytes decoded that way round-trip)."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def imap_string(value: str | bytes) -> tuple[bytes, int]:
    """Encode an IMAP string as Dovecot's ``imap_append_string`` does.

    Returns ``(encoded, literal_count)``: ``encoded`` is ``"..."`` or ``{n}\\r\\n<n bytes>``
    (a synchronizing literal, sent without waiting for ``+`` exactly as Dovecot's proxy
    does), ``literal_count`` is 1 for a literal so the caller can skip the peer's ``+``."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    if _PLAIN.fullmatch(data):
        return b'"' + data + b'"', 0        # the common case: plain ASCII
    if b"\0" in data:
        raise ValueError("NUL cannot be sent in an IMAP string")
    escapes = 0
    for c in data:
        if c == 0x22 or c == 0x5C:
            escapes += 1
            if escapes > _QUOTED_MAX_ESCAPE_CHARS:
                return b"{%d}\r\n%s" % (len(data), data), 1
        elif c in _NEEDS_LITERAL:
            return b"{%d}\r\n%s" % (len(data), data), 1
    if escapes:
        data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + data + b'"', 0


def imap_nstring(value: str | bytes | None) -> tuple[bytes, int]:
    """Like :func:`imap_string`, ``NIL`` for None (``imap_append_nstring``)."""
    if value is None:
        return b"NIL", 0
    return imap_string(value)


def imap_quoted(value: str | bytes) -> bytes:
    """Always a quoted string (``imap_append_quoted``): CR, LF, NUL and 8-bit bytes are
    dropped, ``"`` and ``\\`` escaped."""
    data = to_bytes(value)
    out = bytearray(b'"')
    for c in data:
        if c in (0x0D, 0x0A, 0) or c >= 0x80:
            continue
        if c == 0x22 or c == 0x5C:
            out.append(0x5C)
        out.append(c)
    out.append(0x22)
    return bytes(out)
