"""Forwarded session fields: the client's address, session id, TTL and ``forward_*`` fields
that a proxy passes to the next hop (Dovecot Design/ParameterForwarding).

Owns: ``ForwardedFields`` and every encoder/decoder of them, written once for all protocols:
IMAP ID arguments (wire §1.2) and their trusted-peer decoding (wire §1.5), POP3 XCLIENT
(wire §2.1), Dovecot's session id and TAB escaping. Must not import io code, sockets or any
protocol connection module.

TTL: ``ForwardedFields.ttl`` is the session's OWN TTL (5 for a fresh client, or the value a
trusted peer sent, which replaces it). The decrement happens only when encoding for the next
hop: ``imap_id_arguments()`` sends ``x-proxy-ttl`` = ttl-1 and ``xclient_pop3()`` sends
``TTL=`` ttl-1, as Dovecot's ``proxy_write_id`` does. ``loop_detected`` (ttl <= 1) must be
checked before connecting to a backend: Dovecot then fails with REMOTE_CONFIG
``TTL reached zero - proxies appear to be looping?`` (``imap.ClientConnection`` also reports
that failure at once instead of sending anything).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

from ._errors import LocalProtocolError
from ._imapquote import imap_nstring, imap_quoted, imap_string

__all__ = [
    "DEFAULT_TTL",
    "TTL_LOOP_REASON",
    "ForwardedFields",
    "from_imap_id",
    "retained_id_pairs",
    "new_session_id",
    "dovecot_tab_escape",
    "dovecot_tab_unescape",
]

DEFAULT_TTL = 5
"""A fresh client's TTL (Dovecot ``LOGIN_PROXY_TTL``): at most 4 hops."""

TTL_LOOP_REASON = "TTL reached zero - proxies appear to be looping?"

MAX_SESSION_ID_LEN = 64   # LOGIN_MAX_SESSION_ID_LEN
MAX_CLIENT_ID_LEN = 256   # LOGIN_MAX_CLIENT_ID_LEN (imap_id_retain)


_CTL_RE = re.compile("[\0\r\n]")


def _bad(msg: str) -> None:
    raise LocalProtocolError(msg)


def _check_text(name: str, value: object, *, allow_crlf: bool = False) -> None:
    if not isinstance(value, str):
        _bad(f"{name} must be str, not {type(value).__name__}")
    assert isinstance(value, str)
    if "\0" in value or (not allow_crlf and ("\r" in value or "\n" in value)):
        _bad(f"{name} must not contain NUL" + ("" if allow_crlf else ", CR or LF"))


def _check_port(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        _bad(f"{name} must be an int in 0..65535")


@dataclass(frozen=True, slots=True)
class ForwardedFields:
    """The session data forwarded to the next hop.

    ``forward`` holds the ``forward_<name>`` fields in passdb order, name without the
    prefix, value ``None`` for a field without ``=`` (sent as NIL); ``retained_id`` holds
    the client's own ID pairs kept by ``imap_id_retain`` (see :func:`retained_id_pairs`).
    Strings may not contain NUL; only forward values may contain CR/LF (encoded safely).
    """

    session_id: str
    originating_ip: str
    originating_port: int
    connected_ip: str
    connected_port: int
    ttl: int = DEFAULT_TTL
    forward: tuple[tuple[str, str | None], ...] = ()
    retained_id: tuple[tuple[str, str | None], ...] = ()

    def __post_init__(self) -> None:
        # The usual case in one pass (this runs for every connection); any doubt falls
        # through to the checks that name the offending field.
        sid, oip, cip = self.session_id, self.originating_ip, self.connected_ip
        if (type(sid) is str and type(oip) is str and type(cip) is str
                and type(self.originating_port) is int and type(self.connected_port) is int
                and type(self.ttl) is int and self.ttl >= 0
                and 0 <= self.originating_port <= 65535 and 0 <= self.connected_port <= 65535
                and not self.forward and not self.retained_id
                and not _CTL_RE.search(sid + oip + cip)):
            return
        _check_text("session_id", self.session_id)
        _check_text("originating_ip", self.originating_ip)
        _check_text("connected_ip", self.connected_ip)
        _check_port("originating_port", self.originating_port)
        _check_port("connected_port", self.connected_port)
        if not isinstance(self.ttl, int) or isinstance(self.ttl, bool) or self.ttl < 0:
            _bad("ttl must be a non-negative int")
        for field_name in ("forward", "retained_id"):
            pairs = getattr(self, field_name)
            if not isinstance(pairs, tuple):
                _bad(f"{field_name} must be a tuple of (str, str | None) pairs")
            for pair in pairs:
                if not isinstance(pair, tuple) or len(pair) != 2:
                    _bad(f"{field_name} must be a tuple of (str, str | None) pairs")
                _check_text(f"{field_name} name", pair[0])
                if pair[1] is not None:
                    _check_text(f"{field_name} value", pair[1], allow_crlf=True)

    def with_forward(self, forward: Iterable[tuple[str, str | None]]) -> ForwardedFields:
        """A copy with the passdb's ``forward_*`` fields (*forward*, names without the
        prefix) merged in as Dovecot does: a trusted peer's x-forward fields become the
        auth request's first extra fields, a passdb field of the same name replaces the
        value in place, new names are appended in passdb order."""
        forward = tuple(forward)
        if not forward:
            return self       # the usual case, no forward_ fields: the object is frozen
        merged = list(self.forward)
        index = {name: i for i, (name, _) in enumerate(merged)}
        for name, value in forward:
            if name in index:
                merged[index[name]] = (name, value)
            else:
                index[name] = len(merged)
                merged.append((name, value))
        return ForwardedFields(self.session_id, self.originating_ip, self.originating_port,
                               self.connected_ip, self.connected_port, self.ttl,
                               tuple(merged), self.retained_id)

    def with_retained_id(self, pairs: Iterable[tuple[str, str | None]]) -> ForwardedFields:
        """A copy with ``retained_id`` = :func:`retained_id_pairs` of *pairs*
        (``imap_id_retain=yes``: pass the pairs of the client's latest ID)."""
        return ForwardedFields(self.session_id, self.originating_ip, self.originating_port,
                               self.connected_ip, self.connected_port, self.ttl,
                               self.forward, retained_id_pairs(pairs))

    @property
    def loop_detected(self) -> bool:
        """True when no further hop is allowed (ttl <= 1): fail with REMOTE_CONFIG
        :data:`TTL_LOOP_REASON` instead of connecting."""
        return self.ttl <= 1

    # ------------------------------------------------------------------ IMAP ID

    def imap_id_arguments(self) -> bytes:
        """The parenthesized argument list of Dovecot 2.3's backend ``ID`` command.

        Order: [retained client pairs], x-session-id, x-originating-ip, x-originating-port,
        x-connected-ip, x-connected-port, x-proxy-ttl (ttl-1), then ``x-forward-<name>`` per
        forward field. x-forward values are IMAP strings (quoted with ``\\``/``"`` escaped,
        a literal ``{n}\\r\\n...`` for CR/LF/8-bit, NIL for None)."""
        return self.imap_id_arguments_literals()[0]

    def imap_id_arguments_literals(self) -> tuple[bytes, int]:
        """:meth:`imap_id_arguments` and how many synchronizing literals it contains
        (the backend answers each with a ``+`` line the caller must skip)."""
        literals = 0
        out: list[bytes] = []
        if self.retained_id:
            out.append(_render_retained(self.retained_id))
        sid, n = imap_string(self.session_id)
        literals += n
        # The first six values need no escaping (IPs and numbers); the session id may
        # come from a trusted peer, so it is encoded safely (identical bytes when plain).
        out.append(b'"x-session-id" ' + sid)
        out.append(b'"x-originating-ip" ' + imap_string(self.originating_ip)[0])
        out.append(b'"x-originating-port" "%d"' % self.originating_port)
        out.append(b'"x-connected-ip" ' + imap_string(self.connected_ip)[0])
        out.append(b'"x-connected-port" "%d"' % self.connected_port)
        out.append(b'"x-proxy-ttl" "%d"' % max(self.ttl - 1, 0))
        for name, value in self.forward:
            k, n1 = imap_string("x-forward-" + name)
            v, n2 = imap_nstring(value)
            literals += n1 + n2
            out.append(k + b" " + v)
        return b"(" + b" ".join(out) + b")", literals

    @classmethod
    def from_imap_id(cls, pairs: Iterable[tuple[str, str | None]],
                     base: ForwardedFields) -> ForwardedFields:
        """Apply a TRUSTED peer's ID keys to *base* (wire §1.5; call it for the first ID
        command only, ``ClientIdentified.first``).

        Keys are matched case-insensitively, NIL values ignored, invalid values ignored
        (as Dovecot's ``net_addr2ip``/``net_str2port``/``str_to_uint`` failures are):
        ``x-originating-ip``, ``x-originating-port``, ``x-connected-ip``,
        ``x-connected-port``, ``x-proxy-ttl``, ``x-session-id`` / ``x-session-ext-id``
        (at most 64 characters), ``x-forward-<name>`` (appended to ``forward``)."""
        session_id = base.session_id
        oip, oport = base.originating_ip, base.originating_port
        cip, cport = base.connected_ip, base.connected_port
        ttl = base.ttl
        forward = list(base.forward)
        for key, value in pairs:
            if value is None or not isinstance(key, str) or not isinstance(value, str):
                continue
            k = key.lower()
            if k == "x-originating-ip":
                ip = _parse_ip(value)
                if ip is not None:
                    oip = ip
            elif k == "x-originating-port":
                port = _parse_uint(value, 65535)
                if port:
                    oport = port
            elif k == "x-connected-ip":
                ip = _parse_ip(value)
                if ip is not None:
                    cip = ip
            elif k == "x-connected-port":
                port = _parse_uint(value, 65535)
                if port:
                    cport = port
            elif k == "x-proxy-ttl":
                t = _parse_uint(value, 0xFFFFFFFF)
                if t is not None:
                    ttl = t
            elif k in ("x-session-id", "x-session-ext-id"):
                if _valid_session_id(value):
                    session_id = value
            elif k.startswith("x-forward-"):
                if "\0" not in key and "\0" not in value:
                    forward.append((key[10:], value))
        return cls(session_id, oip, oport, cip, cport, ttl, tuple(forward), base.retained_id)

    # ------------------------------------------------------------------ POP3 XCLIENT

    def xclient_pop3(self) -> bytes:
        """Dovecot pop3-login's backend XCLIENT line (wire §2.1), CRLF included:
        ``XCLIENT ADDR=<ip> PORT=<port> SESSION=<id> TTL=<ttl-1>[ FORWARD=<base64>]``.

        FORWARD is plain base64 of the TAB-joined, Dovecot-tab-escaped ``name=value``
        forward fields; omitted when there are none. Raises ``ValueError`` if a value
        cannot be written as one XCLIENT token (whitespace in the session id or an IP)."""
        for name, v in (("session_id", self.session_id), ("originating_ip", self.originating_ip)):
            if not v or any(c.isspace() for c in v):
                raise ValueError(f"{name} {v!r} cannot be sent in XCLIENT")
        line = "XCLIENT ADDR=%s PORT=%d SESSION=%s TTL=%d" % (
            self.originating_ip, self.originating_port, self.session_id, max(self.ttl - 1, 0))
        out = line.encode("utf-8", "surrogateescape")
        if self.forward:
            fwd = "\t".join(
                dovecot_tab_escape(name if value is None else f"{name}={value}")
                for name, value in self.forward)
            out += b" FORWARD=" + base64.b64encode(fwd.encode("utf-8", "surrogateescape"))
        return out + b"\r\n"


def from_imap_id(pairs: Iterable[tuple[str, str | None]], base: ForwardedFields) -> ForwardedFields:
    """Module-level alias of :meth:`ForwardedFields.from_imap_id`."""
    return ForwardedFields.from_imap_id(pairs, base)


# Keys Dovecot's imap-login handles itself (imap_login_id_params); they are never retained.
_HANDLED_KEYS = frozenset({
    "x-originating-ip", "x-originating-port", "x-connected-ip", "x-connected-port",
    "x-proxy-ttl", "x-session-id", "x-session-ext-id",
})


def retained_id_pairs(pairs: Iterable[tuple[str, str | None]]) -> tuple[tuple[str, str | None], ...]:
    """The client ID pairs ``imap_id_retain=yes`` keeps (Dovecot ``cmd_id_handle_keyvalue``):
    every pair whose key is not one Dovecot handles itself (the ``x-*`` keys above and the
    ``x-forward-`` prefix), while the rendered list stays under 256 bytes (the first pair is
    always kept). Use the pairs of the client's LATEST ID command."""
    kept: list[tuple[str, str | None]] = []
    rendered_len = -1
    for key, value in pairs:
        k = key.lower()
        if k in _HANDLED_KEYS or k.startswith("x-forward-"):
            continue
        kb = len(key.encode("utf-8", "surrogateescape"))
        vb = 3 if value is None else len(value.encode("utf-8", "surrogateescape"))
        kvlen = kb + 2 + 1 + vb + 2
        if rendered_len >= 0 and rendered_len + kvlen >= MAX_CLIENT_ID_LEN:
            continue
        piece = _render_retained(((key, value),))
        rendered_len = len(piece) if rendered_len < 0 else rendered_len + 1 + len(piece)
        kept.append((key, value))
    return tuple(kept)


def _render_retained(pairs: Iterable[tuple[str, str | None]]) -> bytes:
    return b" ".join(imap_quoted(k) + b" " + (b"NIL" if v is None else imap_quoted(v))
                     for k, v in pairs)


def _parse_ip(value: str) -> str | None:
    v = value
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def _parse_uint(value: str, maximum: int) -> int | None:
    # Dovecot str_to_uint / net_str2port: decimal digits only, no sign, no spaces.
    if not value or len(value) > 10 or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return n if n <= maximum else None


def _valid_session_id(value: str) -> bool:
    # Dovecot accepts any value of <= 64 bytes; we also refuse control characters and
    # whitespace so the id can be re-sent verbatim in XCLIENT/log lines without injection.
    if not value or len(value.encode("utf-8", "surrogateescape")) > MAX_SESSION_ID_LEN:
        return False
    return all(c.isprintable() and not c.isspace() for c in value)


def _packed_ip(ip: str) -> bytes:
    # A canonical dotted quad (what the kernel reports) packs without building an
    # ipaddress object: this runs once per connection.
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        try:
            return bytes(map(int, parts))
        except ValueError:
            pass
    return ipaddress.ip_address(ip).packed


def new_session_id(ip: str, port: int, time_us: int) -> str:
    """Dovecot's login session id: base64 of the lowest 48 bits of the µs timestamp
    (little-endian), the client port (16 bits little-endian) and the IP's bytes (4 for
    IPv4, 16 for IPv6; an empty ip counts as 0.0.0.0). 16 characters for IPv4, 32 for
    IPv6; no padding is ever needed."""
    raw = (time_us & 0xFFFF_FFFF_FFFF).to_bytes(6, "little") + (port & 0xFFFF).to_bytes(2, "little")
    raw += _packed_ip(ip) if ip else b"\0\0\0\0"
    return binascii.b2a_base64(raw, newline=False).decode("ascii").rstrip("=")


_TAB_ESCAPES = {"\0": "\x010", "\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_TAB_ESCAPE_TABLE = str.maketrans(_TAB_ESCAPES)
_TAB_UNESCAPES = {"0": "\0", "1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


def dovecot_tab_escape(value: str) -> str:
    """Dovecot ``str_append_tabescaped_n``: 0x01→``\\x011``, TAB→``\\x01t``,
    CR→``\\x01r``, LF→``\\x01n``, NUL→``\\x010``."""
    return value.translate(_TAB_ESCAPE_TABLE)


def dovecot_tab_unescape(value: str) -> str:
    """Inverse of :func:`dovecot_tab_escape` (Dovecot ``str_tabunescape``: an unknown
    escape gives the character itself, a trailing 0x01 is dropped)."""
    if "\x01" not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        j = value.find("\x01", i)
        if j < 0:
            out.append(value[i:])
            break
        out.append(value[i:j])
        if j + 1 < n:
            c = value[j + 1]
            out.append(_TAB_UNESCAPES.get(c, c))
        i = j + 2
    return "".join(out)
