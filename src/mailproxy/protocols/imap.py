"""IMAP4rev1 login, both roles, byte for byte as Dovecot 2.3's imap-login proxy.

Owns: ``ServerConnection`` (client-facing: the proxy plays the IMAP server until the login
is done, ``src/imap-login/imap-login-client.c``, ``client-authenticate.c``,
``imap-login-cmd-id.c``) and ``ClientConnection`` (backend-facing: the proxy logs in to the
backend, ``src/imap-login/imap-proxy.c``); the wire reference is
``shared/reference/dovecot-proxy-wire.md`` §1. Must not import socket, ssl, trio, asyncio,
anyio or selectors, nor anything from ``io/``.

Shape (cf. h11 ``Connection``): ``receive_data(bytes)`` (``b""`` = EOF), ``next_event()``
(an event or ``NEED_DATA``), ``send(event) -> bytes`` for the driver's decisions, and
``data_to_send()`` for bytes the connection produced itself (greeting, replies to
CAPABILITY/NOOP/ID..., SASL challenges, ``+ OK``). After each ``next_event()`` the driver
sends ``data_to_send()`` before anything else. A connection that raised
``RemoteProtocolError`` stays in ``ERROR``.
"""

from __future__ import annotations

import functools
import re
import time
from collections import deque
from typing import Callable, Sequence

from .. import __version__
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    BackendFailure,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    Bye,
    ClientIdentified,
    ConnectionEnded,
    Credentials,
    Event,
    FailureKind,
    Referral,
    StartTLSRequested,
    StartTLSRequired,
    UntaggedRelay,
)
from ._framing import LineReader
from ._imapquote import imap_quoted, imap_string
from ._secret import Secret
from ._states import CLIENT_TRANSITIONS, SERVER_TRANSITIONS, ClientState, ServerState
from .forwarding import TTL_LOOP_REASON
from .sasl import (
    SERVER_MECHANISMS,
    ClientExchange,
    InvalidBase64,
    MalformedResponse,
    SaslClientError,
    ServerExchange,
    decode_base64,
    encode_base64,
)

__all__ = [
    "ServerConnection",
    "ClientConnection",
    "ServerState",
    "ClientState",
    "CAPABILITY_BANNER",
    "DEFAULT_PORT",
]

DEFAULT_PORT = 143

CAPABILITY_BANNER = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE"
"""Dovecot's CAPABILITY_BANNER_STRING (LITERAL+, STARTTLS, LOGINDISABLED, AUTH= follow)."""

_CRLF = b"\r\n"

# --- Dovecot's texts (imap-login-client.c, client-common-auth.c, login-common.h) ------
_BYE_INPUT_FULL = b"* BYE Input buffer full, aborting\r\n"
_BYE_LITERAL_TOO_LARGE = b"* BYE Literal size too large\r\n"
_BYE_TOO_MANY_BAD = b"* BYE Too many invalid IMAP commands.\r\n"
_BAD_COMMAND = b" BAD Error in IMAP command received by server.\r\n"
_LOGIN_HINT = (b" BAD First parameter in line is IMAP's command tag, not the command name. "
               b"Add that before the command, like: a login user pass\r\n")
_PLAINTEXT_ALERT = (b"* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, "
                    b"but your client did it anyway. If anyone was listening, the password "
                    b"was exposed.\r\n")
_NO_PLAINTEXT_LOGIN = (b" NO [PRIVACYREQUIRED] Plaintext authentication disallowed on "
                       b"non-secure (SSL/TLS) connections.\r\n")
_NO_PLAINTEXT_AUTH = b" NO [PRIVACYREQUIRED] Plaintext authentication disabled.\r\n"
_NO_UNSUPPORTED_MECH = b" NO [ALERT] Unsupported authentication mechanism.\r\n"
_NO_AUTH_FAILED = b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
_BAD_ABORTED = b" BAD Authentication aborted by client.\r\n"
_BAD_B64_INITIAL = b" BAD Invalid base64 data in initial response\r\n"
_BAD_B64_CONTINUED = b" BAD Invalid base64 data in continued response\r\n"
_BAD_ID = b" BAD Invalid ID parameters\r\n"
_PROXY_FAILURE_MSG = "Account is temporarily unavailable."   # LOGIN_PROXY_FAILURE_MSG

_IMAP_TAG_MAX_LEN = 126          # LOGIN_MAX_MASTER_PREFIX_LEN - 2
_IMAP_ID_KEY_MAX_LEN = 30
_MAX_BAD_COMMANDS = 3            # CLIENT_MAX_BAD_COMMANDS (never reset in imap-login)

# Dovecot imap_parser_read_next_atom: tag = 1*<ASTRING-CHAR except "+">; no CTL, no 8-bit.
_TAG_BAD = bytes(range(0x20)) + bytes(range(0x80, 0x100)) + b' (){%*"\\]+'
_CMD_BAD = _TAG_BAD.replace(b"+", b"")
_ATOM_RUN = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]*')   # IS_ATOM_PARSER_INPUT complement


def _atom_end(data: bytes, pos: int) -> int:
    """Index of the first SP or CR at/after pos, or len(data)."""
    sp = data.find(b" ", pos)
    cr = data.find(b"\r", pos)
    if sp < 0:
        return len(data) if cr < 0 else cr
    return sp if cr < 0 or sp < cr else cr


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _sanitize(data: bytes, max_len: int = 160) -> str:
    """Dovecot str_sanitize: control characters become '?', long text ends in '...'."""
    s = data.decode("utf-8", "replace")
    s = "".join("?" if (ord(c) < 0x20 or ord(c) == 0x7F) else c for c in s)
    if len(s) > max_len:
        s = s[:max_len - 3] + "..."
    return s


# =========================================================================================
# Argument parsing (Dovecot lib-imap/imap-parser.c, as far as the login commands need it)
# =========================================================================================

_EOL, _LPAREN, _RPAREN, _ATOM, _NIL, _STRING = range(6)


class _ParseError(Exception):
    """A syntax error: answered ``<tag> BAD <msg>`` (not counted as a bad command)."""

    def __init__(self, msg: bytes) -> None:
        super().__init__(msg)
        self.msg = msg


class _InvalidId(Exception):
    pass


class _ArgParser:
    """Tokens from a framed command: (text, literal, text, ...) parts."""

    __slots__ = ("parts", "idx", "data", "pos", "inside_list")

    def __init__(self, parts: tuple[bytes, ...], pos: int) -> None:
        self.parts = parts
        self.idx = 0
        self.data = parts[0]
        self.pos = pos
        self.inside_list = False

    def token(self, in_list: bool) -> tuple[int, bytes]:
        data = self.data
        n = len(data)
        pos = self.pos
        while pos < n and data[pos] == 0x20:
            pos += 1
        if pos >= n:
            self.pos = pos
            return _EOL, b""
        c = data[pos]
        if c == 0x22:  # "
            return _STRING, self._quoted(pos)
        if c == 0x28:  # (
            self.pos = pos + 1
            return _LPAREN, b""
        if c == 0x29:  # )
            self.pos = pos + 1
            return _RPAREN, b""
        if c == 0x7B:  # {
            return _STRING, self._literal(pos)
        if c == 0x0D:
            raise _ParseError(b"CR sent without LF")
        if c == 0x7E and pos + 1 < n and data[pos + 1] == 0x7B:  # ~{
            raise _ParseError(b"literal8 not allowed here")
        end = _ATOM_RUN.match(data, pos).end()  # type: ignore[union-attr]
        if end < n:
            e = data[end]
            if e == 0x29:
                if not (in_list or self.inside_list):
                    raise _ParseError(b"Unexpected ')'")
            elif e != 0x20 and e != 0x0D:
                if e >= 0x80:
                    raise _ParseError(b"8bit data in atom")
                raise _ParseError(b"Invalid characters in atom")
        atom = data[pos:end]
        self.pos = end
        if len(atom) == 3 and atom.upper() == b"NIL":
            return _NIL, atom
        return _ATOM, atom

    def _quoted(self, pos: int) -> bytes:
        data = self.data
        start = pos + 1
        end = data.find(b'"', start)
        if end >= 0:
            body = data[start:end]
            if b"\\" not in body and b"\0" not in body and b"\r" not in body:
                self.pos = end + 1
                return body
        out = bytearray()
        i, n = start, len(data)
        while True:
            if i >= n:
                raise _ParseError(b"Missing '\"'")
            c = data[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0:
                raise _ParseError(b"NULs not allowed in strings")
            if c == 0x5C:
                i += 1
                if i >= n or data[i] == 0x0D:
                    raise _ParseError(b"Missing '\"'")
                if data[i] == 0:
                    raise _ParseError(b"NULs not allowed in strings")
                c = data[i]
            elif c == 0x0D:
                raise _ParseError(b"Missing '\"'")
            out.append(c)
            i += 1

    def _literal(self, pos: int) -> bytes:
        data = self.data
        n = len(data)
        i = pos + 1
        nonsync = False
        while True:
            if i >= n:
                raise _ParseError(b"Invalid literal size")
            c = data[i]
            if c == 0x7D:  # }
                break
            if nonsync:
                raise _ParseError(b"Expecting '}' after '+'")
            if c == 0x2B:
                nonsync = True
            elif not 0x30 <= c <= 0x39:
                raise _ParseError(b"Invalid literal size")
            i += 1
        # the literal's data must follow the line end; the reader framed it as the next part
        if i + 1 != n or self.idx + 1 >= len(self.parts):
            raise _ParseError(b"Missing LF after literal size")
        value = self.parts[self.idx + 1]
        if b"\0" in value:
            # Dovecot would silently cut the string at the NUL (C strings); refuse instead.
            raise _ParseError(b"NULs not allowed in strings")
        self.idx += 2
        self.data = self.parts[self.idx]
        self.pos = 0
        return value

    def parse_all(self) -> list[object]:
        """Every argument up to the end of the command (nested lists as Python lists)."""
        root: list[object] = []
        cur = root
        stack: list[list[object]] = []
        while True:
            kind, value = self.token(bool(stack))
            if kind == _EOL:
                if stack:
                    raise _ParseError(b"Missing ')'")
                return root
            if kind == _LPAREN:
                new: list[object] = []
                cur.append(new)
                stack.append(cur)
                cur = new
            elif kind == _RPAREN:
                if not stack:
                    raise _ParseError(b"Unexpected ')'")
                cur = stack.pop()
            else:
                cur.append((kind, value))

    def list_rest(self) -> list[object]:
        """The rest of a list whose "(" was just read."""
        out: list[object] = []
        while True:
            kind, value = self.token(True)
            if kind == _EOL:
                raise _ParseError(b"Missing ')'")
            if kind == _RPAREN:
                return out
            if kind == _LPAREN:
                out.append(self.list_rest())
            else:
                out.append((kind, value))


@functools.lru_cache(maxsize=16)
def _id_reply(name: str, version: str) -> bytes:
    return b'* ID ("name" ' + imap_quoted(name) + b' "version" ' + imap_quoted(version) + b")\r\n"


def _is_authenticate_line(prefix: bytes) -> bool:
    """Dovecot reads AUTHENTICATE's SASL-IR as a raw line (up to 8192 bytes, no literals)."""
    sp = prefix.find(b" ")
    if sp <= 0:
        return False
    name = prefix[sp + 1:sp + 13]
    if name.upper() != b"AUTHENTICATE":
        return False
    nxt = prefix[sp + 13:sp + 14]
    return nxt in (b"", b" ", b"\r", b"\n")


def _line_too_long() -> RemoteProtocolError:
    return RemoteProtocolError("Input buffer full", reply=_BYE_INPUT_FULL)


def _literal_too_large() -> RemoteProtocolError:
    return RemoteProtocolError("Literal size too large", reply=_BYE_LITERAL_TOO_LARGE)


def _auth_response_too_large() -> RemoteProtocolError:
    # client_auth_read_line: Dovecot destroys the client without a reply.
    return RemoteProtocolError("Authentication response too large", reply=b"")


# ---------------------------------------------------------------- referral URL (imap-url.c)

_URI_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_URI_SUB_DELIMS = frozenset(b"!$&'()*+,;=")
_URI_USER_OK = (_URI_UNRESERVED | _URI_SUB_DELIMS | {0x3A}) - frozenset(b";:")
_URI_HOST_OK = _URI_UNRESERVED | _URI_SUB_DELIMS


def _uri_encode(value: str, allowed: frozenset[int]) -> str:
    return "".join(chr(b) if b in allowed else "%%%02x" % b
                   for b in value.encode("utf-8", "surrogateescape"))


def referral_url(destuser: str, mechanism: str, host: str, port: int) -> str:
    """``imap://<destuser>;AUTH=<mech>@<host>[:<port>]/`` as Dovecot's ``imap_url_create``
    writes it (percent-encoding in lower-case hex; port omitted when 143). An IPv6 host is
    put in brackets (Dovecot would percent-encode its colons, which no client can use)."""
    if host.startswith("["):
        h = host
    elif ":" in host:
        h = "[" + host + "]"
    else:
        h = _uri_encode(host, _URI_HOST_OK)
    url = "imap://%s;AUTH=%s@%s" % (_uri_encode(destuser, _URI_USER_OK),
                                    _uri_encode(mechanism, _URI_USER_OK), h)
    if port != DEFAULT_PORT:
        url += ":%d" % port
    return url + "/"


# =========================================================================================
# Server role
# =========================================================================================

@functools.lru_cache(maxsize=16)
def _server_setup(greeting: str, capability: str | None, hostname: str,
                  mechanisms: tuple[str, ...], id_name: str, id_version: str
                  ) -> tuple[tuple[str, ...], str, bytes, bytes]:
    """What a ServerConnection derives from its settings, checked and built once per
    distinct settings (every connection of a listener shares them): (mechanisms,
    capability base, greeting bytes, ID reply)."""
    for name, text in (("greeting", greeting), ("capability_override", capability or ""),
                       ("hostname", hostname)):
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"{name} must not contain CR, LF or NUL")
    mechs = tuple(m.upper() for m in mechanisms)
    for m in mechs:
        if m not in SERVER_MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {m!r}")
    if not capability:
        base = CAPABILITY_BANNER + " LITERAL+"
    elif capability.startswith("+"):
        base = CAPABILITY_BANNER + " " + capability[1:] + " LITERAL+"
    else:
        base = capability
    return mechs, base, greeting.encode("utf-8"), _id_reply(id_name, id_version)


class ServerConnection:
    """The client-facing side of an IMAP login (the proxy as IMAP server).

    ``greeting``: text after ``* OK [CAPABILITY ...]``. ``tls_available``: STARTTLS can be
    offered (a certificate is configured). ``tls_active``: the connection is already TLS
    (implicit TLS port). ``secured``: TLS, a trusted network or a local connection, as the
    driver decides it (``tls_active`` implies it). ``disable_plaintext_auth``: refuse
    plaintext mechanisms (all of ours) unless secured. ``mechanisms``: the SASL mechanisms
    offered, in ``AUTH=`` order (subset of ``sasl.SERVER_MECHANISMS``). ``capability_override``:
    Dovecot's ``imap_capability`` override (``"+X Y"`` appends to the default list, any
    other non-empty value replaces it, LITERAL+ included). ``max_line_length`` (1024,
    Dovecot's 1026-byte input buffer) and ``max_literal_size`` (8192: a command including
    its literals, and a SASL response). ``id_name``/``id_version``: our ID reply.
    ``hostname``/``clock``: for the temporary-failure text ``[<hostname>:<local time>]``.

    The greeting is queued in ``data_to_send()`` at construction.
    """

    __slots__ = (
        "state", "secured", "tls_active", "client_sent_capability", "_tls_available",
        "_disable_plaintext", "_mechs", "_cap_base", "_cap_bytes", "_greeting", "_reader",
        "_out", "_tag", "_mech", "_sasl", "_bad", "_id_seen", "_starttls_done", "_ended",
        "_id_reply", "_hostname", "_clock", "max_literal_size", "_final_reply",
    )

    def __init__(
        self,
        *,
        greeting: str = "trio-mailproxy ready.",
        tls_available: bool = False,
        tls_active: bool = False,
        secured: bool = False,
        disable_plaintext_auth: bool = True,
        mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
        capability_override: str | None = None,
        max_line_length: int = 1024,
        max_literal_size: int = 8192,
        id_name: str = "trio-mailproxy",
        id_version: str = __version__,
        hostname: str = "localhost",
        clock: Callable[[], float] = time.time,
    ) -> None:
        mechs, base, greeting_bytes, id_reply = _server_setup(
            greeting, capability_override, hostname, tuple(mechanisms), id_name, id_version)
        self.state = ServerState.NOT_AUTHENTICATED
        self.tls_active = bool(tls_active)
        self.secured = bool(secured) or self.tls_active
        self.client_sent_capability = False
        self._tls_available = bool(tls_available)
        self._disable_plaintext = bool(disable_plaintext_auth)
        self._mechs = mechs
        self._cap_base = base
        self._cap_bytes = self._build_capability()
        self._greeting = greeting
        self.max_literal_size = max_literal_size
        self._reader = LineReader(
            max_line_length, max_literal_size,
            line_too_long=_line_too_long, literal_too_large=_literal_too_large,
            raw_line=_is_authenticate_line,
            max_raw_line_length=max_line_length + max_literal_size,
            raw_line_too_long=_auth_response_too_large)
        self._out = bytearray(b"* OK [CAPABILITY " + self._cap_bytes + b"] "
                              + greeting_bytes + _CRLF)
        self._tag = b"*"
        self._mech = "PLAIN"
        self._sasl: ServerExchange | None = None
        self._bad = 0
        self._id_seen = False
        self._starttls_done = False
        self._ended: ConnectionEnded | None = None
        self._id_reply = id_reply
        self._hostname = hostname
        self._clock = clock
        self._final_reply: bytes | None = None

    # ------------------------------------------------------------------ capability

    def _login_disabled(self) -> bool:
        # is_login_cmd_disabled(): secured → only if PLAIN is not offered.
        if self.secured:
            return "PLAIN" not in self._mechs
        return self._disable_plaintext

    def _build_capability(self) -> bytes:
        cap = self._cap_base
        if self._tls_available and not self.tls_active:
            cap += " STARTTLS"
        if self._login_disabled():
            cap += " LOGINDISABLED"
        # sasl_server_get_advertised_mechs(): every mechanism we offer is plaintext.
        if self.secured or not self._disable_plaintext:
            for m in self._mechs:
                cap += " AUTH=" + m
        return cap.encode("utf-8")

    @property
    def capability(self) -> str:
        """The pre-login capability list currently advertised."""
        return self._cap_bytes.decode("utf-8")

    # ------------------------------------------------------------------ I/O

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the client; ``b""`` = EOF. Bytes that arrive while a STARTTLS
        handshake is pending are discarded (command-injection defence)."""
        st = self.state
        if data and (st is ServerState.STARTTLS or st is ServerState.LOGOUT
                     or st is ServerState.ERROR):
            return
        self._reader.feed(data)

    def data_to_send(self) -> bytes:
        """Bytes the connection queued itself (greeting, command replies, challenges);
        empties the queue."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def trailing_data(self) -> bytes:
        """Bytes received but not consumed: after ``AuthSucceeded`` these are the commands
        the client pipelined behind its login; the relay must send them to the backend."""
        return self._reader.trailing_data()

    @property
    def eof(self) -> bool:
        """True once the client closed its side (``receive_data(b"")``)."""
        return self._reader.eof

    def tls_started(self) -> None:
        """The STARTTLS handshake finished: the connection counts as TLS and secured."""
        if self.state is not ServerState.STARTTLS:
            raise LocalProtocolError(f"tls_started() in state {self.state.name}")
        self._reader.discard()
        self.tls_active = True
        self.secured = True
        self._cap_bytes = self._build_capability()
        self._transition("tls_established")

    def _transition(self, event: str) -> None:
        try:
            self.state = SERVER_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event} not allowed in state {self.state.name}") from None

    # ------------------------------------------------------------------ events

    def next_event(self) -> Event | type[NEED_DATA]:
        """Parse the next command(s); answer the ones needing no decision; return the
        next event or ``NEED_DATA``."""
        st = self.state
        if st is ServerState.LOGOUT:
            assert self._ended is not None
            return self._ended
        if st is ServerState.ERROR:
            raise RemoteProtocolError("connection is in ERROR state", reply=b"")
        if st is ServerState.LOGGING_IN:
            raise LocalProtocolError("answer AuthRequested with send() first")
        if st is ServerState.STARTTLS:
            raise LocalProtocolError("call tls_started() after the TLS handshake first")
        if st is ServerState.PROXYING:
            raise LocalProtocolError("login finished; use trailing_data() and relay")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self.state = ServerState.ERROR
            raise

    def _next_event(self) -> Event | type[NEED_DATA]:
        reader = self._reader
        while True:
            if self.state is ServerState.AUTHENTICATING:
                line = reader.next_line(self.max_literal_size, _auth_response_too_large)
                if line is None:
                    return self._need_data()
                ev = self._sasl_response(line)
            else:
                try:
                    parts = reader.next_command()
                finally:
                    # "+ OK" for every synchronizing literal announced so far, also when
                    # a limit is hit right after it (Dovecot answers as it parses)
                    n = reader.pop_continuations()
                    if n:
                        self._out += b"+ OK\r\n" * n
                if parts is None:
                    return self._need_data()
                ev = self._command(parts)
            if ev is not None:
                return ev

    def _need_data(self) -> Event | type[NEED_DATA]:
        if self._reader.eof:
            return self._end("Connection closed")
        return NEED_DATA

    def _end(self, reason: str) -> ConnectionEnded:
        self._transition("closed")
        self._ended = ConnectionEnded(reason)
        return self._ended

    def _reply(self, tag: bytes, rest: bytes) -> None:
        self._out += tag + rest

    def _invalid(self, tag: bytes) -> ConnectionEnded | None:
        # client_invalid_command(): the 3rd one ends the session.
        self._bad += 1
        if self._bad >= _MAX_BAD_COMMANDS:
            self._out += _BYE_TOO_MANY_BAD
            return self._end("Too many invalid commands")
        self._out += tag + _BAD_COMMAND
        return None

    # ------------------------------------------------------------------ commands

    def _command(self, parts: tuple[bytes, ...]) -> Event | None:
        line = parts[0]
        n = len(line)
        i = _atom_end(line, 0)
        tag = line[:i]
        if i == 0 or len(tag) > _IMAP_TAG_MAX_LEN or tag.translate(None, _TAG_BAD) != tag:
            # An invalid tag is never echoed (Dovecot: against replies to HTTP etc.).
            return self._invalid(b"*")
        pos = i + 1 if i < n and line[i] == 0x20 else i
        j = _atom_end(line, pos)
        cmd = line[pos:j]
        if j == pos or cmd.translate(None, _CMD_BAD) != cmd:
            return self._invalid(tag)
        pos = j + 1 if j < n and line[j] == 0x20 else j
        name = cmd.upper()
        if name == b"AUTHENTICATE":
            if len(parts) != 1:  # pragma: no cover - the reader frames it as a raw line
                return self._invalid(tag)
            return self._cmd_authenticate(tag, line, pos)
        if name == b"ID":
            return self._cmd_id(tag, parts, pos)
        parser = _ArgParser(parts, pos)
        try:
            args = parser.parse_all()
        except _ParseError as e:
            self._out += tag + b" BAD " + e.msg + _CRLF
            return None
        handler = _COMMANDS.get(name)
        if handler is None:
            if tag.upper() == b"LOGIN":
                self._out += tag + _LOGIN_HINT
                return None
            return self._invalid(tag)
        return handler(self, tag, args)

    def _cmd_capability(self, tag: bytes, args: list[object]) -> Event | None:
        # Only a CAPABILITY before STARTTLS shows the client ignores the resp-code.
        if not self._starttls_done:
            self.client_sent_capability = True
        self._out += (b"* CAPABILITY " + self._cap_bytes + _CRLF + tag
                      + b" OK Pre-login capabilities listed, post-login capabilities have more.\r\n")
        return None

    def _cmd_noop(self, tag: bytes, args: list[object]) -> Event | None:
        self._out += tag + b" OK NOOP completed.\r\n"
        return None

    def _cmd_enable(self, tag: bytes, args: list[object]) -> Event | None:
        self._out += b"* ENABLED\r\n" + tag + b" OK ENABLE ignored in non-authenticated state.\r\n"
        return None

    def _cmd_logout(self, tag: bytes, args: list[object]) -> Event | None:
        self._out += b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n"
        self._transition("logged_out")
        self._ended = ConnectionEnded("Aborted login by logging out")
        return self._ended

    def _cmd_starttls(self, tag: bytes, args: list[object]) -> Event | None:
        if self.tls_active:
            self._out += tag + b" BAD TLS is already active.\r\n"
            return None
        if not self._tls_available:
            self._out += tag + b" BAD TLS support isn't enabled.\r\n"
            return None
        self._out += tag + b" OK Begin TLS negotiation now.\r\n"
        # Nothing the client sent after STARTTLS in plaintext may be parsed after the
        # handshake (CVE-2011-0411-style command injection).
        self._reader.discard()
        self._starttls_done = True
        self._transition("starttls_accepted")
        return StartTLSRequested()

    def _cmd_login(self, tag: bytes, args: list[object]) -> Event | None:
        if len(args) != 2 or not isinstance(args[0], tuple) or not isinstance(args[1], tuple):
            return self._invalid(tag)
        user: bytes = args[0][1]
        password: bytes = args[1][1]
        if not self.secured and self._disable_plaintext:
            # client_check_plaintext_auth(pass_sent=TRUE)
            self._out += _PLAINTEXT_ALERT + tag + _NO_PLAINTEXT_LOGIN
            return None
        if "PLAIN" not in self._mechs:
            self._out += tag + _NO_UNSUPPORTED_MECH
            return None
        if not user:
            # mech-plain: an empty authentication id fails the login
            self._out += tag + _NO_AUTH_FAILED
            return None
        self._tag = tag
        self._mech = "PLAIN"
        creds = Credentials("PLAIN", _text(user), None, Secret(_text(password)), None, True)
        self._transition("credentials_received")
        return AuthRequested(creds)

    def _cmd_authenticate(self, tag: bytes, line: bytes, pos: int) -> Event | None:
        k = _atom_end(line, pos)
        mech_b = line[pos:k]
        if not mech_b:
            return self._invalid(tag)
        ir = line[k + 1:] if k < len(line) and line[k] == 0x20 else line[k:]
        if len(ir) > self.max_literal_size:
            raise _auth_response_too_large()
        mech = mech_b.decode("latin-1").upper()
        if mech not in self._mechs:
            self._out += tag + _NO_UNSUPPORTED_MECH
            return None
        if not self.secured and self._disable_plaintext:
            self._out += tag + _NO_PLAINTEXT_AUTH
            return None
        initial: bytes | None
        if not ir:
            initial = None
        elif ir == b"=":
            initial = b""
        else:
            try:
                initial = decode_base64(ir)
            except InvalidBase64:
                self._out += tag + _BAD_B64_INITIAL
                return None
        self._tag = tag
        self._mech = mech
        self._sasl = ServerExchange(mech)
        try:
            result = self._sasl.start(initial)
        except MalformedResponse:
            self._out += tag + _NO_AUTH_FAILED
            return None
        return self._sasl_result(result)

    def _sasl_result(self, result: bytes | Credentials) -> Event | None:
        if isinstance(result, Credentials):
            self._sasl = None
            self._transition("credentials_received")
            return AuthRequested(result)
        self._out += b"+ " + encode_base64(result) + _CRLF
        self._transition("challenge_sent")
        return None

    def _sasl_response(self, line: bytes) -> Event | None:
        tag = self._tag
        if self._final_reply is not None:
            # the answer to an OAuth failure challenge: now the delayed NO
            self._out += self._final_reply
            self._final_reply = None
            self._transition("auth_failed")
            return None
        if line == b"*":
            self._out += tag + _BAD_ABORTED
            self._sasl = None
            self._transition("client_aborted")
            return None
        try:
            data = decode_base64(line)
        except InvalidBase64:
            self._out += tag + _BAD_B64_CONTINUED
            self._sasl = None
            self._transition("auth_failed")
            return None
        assert self._sasl is not None
        try:
            result = self._sasl.step(data)
        except MalformedResponse:
            self._out += tag + _NO_AUTH_FAILED
            self._sasl = None
            self._transition("auth_failed")
            return None
        return self._sasl_result(result)

    def _cmd_id(self, tag: bytes, parts: tuple[bytes, ...], pos: int) -> Event | None:
        parser = _ArgParser(parts, pos)
        pairs: list[tuple[str, str | None]] = []
        try:
            kind, _ = parser.token(False)
            if kind == _LPAREN:
                parser.inside_list = True
                key: bytes | None = None
                while True:
                    kind, value = parser.token(True)
                    if kind == _RPAREN:
                        break
                    if kind == _EOL:
                        raise _ParseError(b"Missing ')'")
                    if kind == _LPAREN:
                        parser.list_rest()
                        raise _InvalidId()
                    if key is None:
                        if kind != _STRING or len(value) > _IMAP_ID_KEY_MAX_LEN:
                            raise _InvalidId()
                        key = value
                    else:
                        if kind == _NIL:
                            pairs.append((_text(key), None))
                        elif kind == _STRING:
                            pairs.append((_text(key), _text(value)))
                        else:
                            raise _InvalidId()
                        key = None
            elif kind == _RPAREN:
                raise _ParseError(b"Unexpected ')'")
            elif kind != _EOL and kind != _NIL:
                raise _InvalidId()
        except _ParseError as e:
            self._out += tag + b" BAD " + e.msg + _CRLF
            return None
        except _InvalidId:
            self._out += tag + _BAD_ID
            return None
        self._out += self._id_reply + tag + b" OK ID completed.\r\n"
        first = not self._id_seen
        self._id_seen = True
        return ClientIdentified(tuple(pairs), first)

    # ------------------------------------------------------------------ driver replies

    def send(self, event: Event) -> bytes:
        """Render the driver's answer: ``AuthSucceeded``/``AuthFailed`` (after
        ``AuthRequested``), ``Bye`` (ends the session), ``UntaggedRelay`` (a backend line)."""
        if isinstance(event, UntaggedRelay):
            return event.line
        if isinstance(event, Bye):
            if self.state in (ServerState.PROXYING, ServerState.LOGOUT, ServerState.ERROR):
                raise LocalProtocolError(f"cannot send Bye in state {self.state.name}")
            self._end(event.text)
            return b"* BYE " + event.text.encode("utf-8") + _CRLF
        if self.state is not ServerState.LOGGING_IN:
            raise LocalProtocolError(f"cannot send {type(event).__name__} in state "
                                     f"{self.state.name}")
        if isinstance(event, AuthSucceeded):
            data = self._render_success(event.backend)
            self._transition("auth_succeeded")
            return data
        if isinstance(event, AuthFailed):
            data = self._render_failure(event)
            challenge = _OAUTH_FAILURE_CHALLENGES.get(self._mech)
            if challenge is not None and event.kind in (FailureKind.AUTH_FAILED,
                                                        FailureKind.TEMPFAIL):
                # Dovecot mech-oauth2: a failed token check is answered with a JSON
                # challenge (RFC 7628 §3.2.2); IMAP has no final-data reply, so the client
                # answers it (anything, even "*") and only then gets the NO.
                self._final_reply = data
                self._transition("failure_challenge_sent")
                return b"+ " + challenge + _CRLF
            self._transition("auth_failed")
            return data
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _render_success(self, backend: BackendLoggedIn) -> bytes:
        # client_send_login_reply() (wire §1.3)
        line = backend.line
        sp = line.find(b" ")
        rest = line[sp + 1:] if sp >= 0 else line
        text = rest[3:] if rest[:3] == b"OK " else rest
        caps = None if backend.capabilities is None else \
            " ".join(backend.capabilities).encode("utf-8", "surrogateescape")
        tagged = text[:12].upper() == b"[CAPABILITY "
        out = bytearray()
        if self.client_sent_capability and caps is not None:
            out += b"* CAPABILITY " + caps + _CRLF
        out += self._tag + b" OK "
        if not self.client_sent_capability and not tagged and caps is not None:
            out += b"[CAPABILITY " + caps + b"] "
            if text[:1] == b"[":
                # replace the backend's other leading resp-code (Dovecot's loop stops AT
                # the "]" and would leave it in; we skip it and one space as intended)
                k = text.find(b"]")
                text = b"" if k < 0 else text[k + 1:]
                if text[:1] == b" ":
                    text = text[1:]
        out += text + _CRLF
        return bytes(out)

    def _render_failure(self, event: AuthFailed) -> bytes:
        tag = self._tag
        kind = event.kind
        text = event.text
        if kind is FailureKind.AUTH_FAILED:
            if text is None:
                return tag + _NO_AUTH_FAILED
            t = text.encode("utf-8")
            return tag + (b" NO " if t[:1] == b"[" else b" NO [ALERT] ") + t + _CRLF
        if kind is FailureKind.TEMPFAIL:
            if text is None:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._clock()))
                text = f"Temporary authentication failure. [{self._hostname}:{stamp}]"
            return tag + b" NO [UNAVAILABLE] " + text.encode("utf-8") + _CRLF
        if kind is FailureKind.NOLOGIN:
            return (tag + b" NO [CONTACTADMIN] "
                    + (text or "Login disabled for this user").encode("utf-8") + _CRLF)
        if kind is FailureKind.REFERRAL:
            ref = event.referral
            assert isinstance(ref, Referral)
            reason = ref.reason or text or "Try this server instead."
            url = referral_url(ref.destuser, ref.mechanism or self._mech, ref.host, ref.port)
            return (tag + b" NO [REFERRAL " + url.encode("ascii") + b"] "
                    + reason.encode("utf-8") + _CRLF)
        if kind is FailureKind.BACKEND:
            assert event.backend is not None
            return self._render_backend_failure(event.backend)
        if kind is FailureKind.UNAVAILABLE:
            return tag + b" NO [UNAVAILABLE] " + (text or _PROXY_FAILURE_MSG).encode("utf-8") + _CRLF
        if kind is FailureKind.CONFIG:
            return tag + b" NO [SERVERBUG] " + (text or _PROXY_FAILURE_MSG).encode("utf-8") + _CRLF
        # PRIVACY_REQUIRED (ssl=required)
        return (tag + b" NO [PRIVACYREQUIRED] "
                + (text or "Authentication not allowed until SSL/TLS is enabled.").encode("utf-8")
                + _CRLF)

    def _render_backend_failure(self, failure: BackendLoginFailed) -> bytes:
        # imap_proxy_parse_line() "L " branch and imap_proxy_send_failure_reply()
        tag = self._tag
        kind = failure.kind
        rest: bytes | None = None
        if failure.line is not None:
            sp = failure.line.find(b" ")
            rest = failure.line[sp + 1:] if sp >= 0 else failure.line
        if kind is BackendFailure.AUTH:
            if rest is None or rest.startswith(b"NO [AUTHENTICATIONFAILED]") \
                    or not rest.startswith(b"NO ["):
                return tag + _NO_AUTH_FAILED
            return tag + b" " + rest + _CRLF
        if kind is BackendFailure.AUTH_TEMPFAIL:
            if rest is not None:
                reason = rest[3:] if rest[:3].upper() == b"NO " else rest
            else:
                reason = failure.reason.encode("utf-8")
            return tag + b" NO " + reason + _CRLF
        if kind is BackendFailure.REMOTE_CONFIG:
            return tag + b" NO [SERVERBUG] " + _PROXY_FAILURE_MSG.encode() + _CRLF
        return tag + b" NO [UNAVAILABLE] " + _PROXY_FAILURE_MSG.encode() + _CRLF


# mech-oauth2.c error documents (xoauth2_verify_callback / oauthbearer_verify_callback)
_OAUTH_FAILURE_CHALLENGES = {
    "XOAUTH2": encode_base64(b'{"status":"401","schemes":"bearer","scope":"mail"}'),
    "OAUTHBEARER": encode_base64(b'{"status":"invalid_token"}'),
}


_COMMANDS: dict[bytes, Callable[[ServerConnection, bytes, list[object]], Event | None]] = {
    b"LOGIN": ServerConnection._cmd_login,
    b"CAPABILITY": ServerConnection._cmd_capability,
    b"STARTTLS": ServerConnection._cmd_starttls,
    b"NOOP": ServerConnection._cmd_noop,
    b"LOGOUT": ServerConnection._cmd_logout,
    b"ENABLE": ServerConnection._cmd_enable,
}


# =========================================================================================
# Client role
# =========================================================================================

# imap_proxy_sent_state bits and names, for Dovecot's "state=<sent>/<rcvd>" log text
_SENT_ID, _SENT_STARTTLS, _SENT_CAPABILITY, _SENT_AUTHENTICATE, _SENT_AUTH_CONTINUE, \
    _SENT_LOGIN = (1, 2, 4, 8, 16, 32)
_SENT_NAMES = ((_SENT_ID, "id"), (_SENT_STARTTLS, "starttls"), (_SENT_CAPABILITY, "capability"),
               (_SENT_AUTHENTICATE, "authenticate"), (_SENT_AUTH_CONTINUE, "auth-continue"),
               (_SENT_LOGIN, "login"))

_MAX_BACKEND_LINE = 4094   # MAX_PROXY_INPUT_SIZE 4096 including CRLF


def _backend_line_too_long() -> RemoteProtocolError:
    return RemoteProtocolError("Too long input line")


class ClientConnection:
    """The backend-facing side of an IMAP login (the proxy as IMAP client).

    Nothing is sent before the backend's greeting. The driver loops ``next_event()``
    (sending ``data_to_send()`` after each call) until ``BackendLoggedIn`` or
    ``BackendLoginFailed``; ``StartTLSRequired`` asks for a TLS handshake followed by
    ``tls_started()``; ``UntaggedRelay`` lines go to the client. Fixed tags ``I`` (ID),
    ``S`` (STARTTLS), ``C`` (CAPABILITY), ``L`` (LOGIN/AUTHENTICATE), as Dovecot.
    ``max_line_length``: a backend line longer than 4096 bytes with CRLF is a PROTOCOL
    failure (``Too long input line``).
    """

    __slots__ = (
        "login", "state", "capabilities", "_caps_raw", "_reader", "_out", "_pending",
        "_sasl_ir", "_logindisabled", "_capability_sent", "_sent", "_rcvd", "_sasl",
        "_plus_to_skip", "_tls", "_id",
    )

    def __init__(self, login: BackendLogin, *, max_line_length: int = _MAX_BACKEND_LINE) -> None:
        if not isinstance(login, BackendLogin):
            raise LocalProtocolError("login must be a BackendLogin")
        self.login = login
        self.state = ClientState.BANNER
        self.capabilities: tuple[str, ...] | None = None
        self._caps_raw: bytes | None = None
        self._reader = LineReader(max_line_length, None, line_too_long=_backend_line_too_long)
        self._out = bytearray()
        self._pending: deque[Event] = deque()
        self._sasl_ir = False
        self._logindisabled = False
        self._capability_sent = False
        self._sent = 0
        self._rcvd = "none"
        self._sasl: ClientExchange | None = None
        self._plus_to_skip = 0
        self._tls = login.ssl
        # The ID arguments are built now, before the banner: a driver creates the
        # connection while its connect is under way, so this is off the login's path.
        f = login.forwarded
        self._id = None if f is None or login.not_trusted or f.loop_detected \
            else f.imap_id_arguments_literals()
        if f is not None and f.loop_detected:
            # login_proxy_new(): checked before connecting; nothing is ever sent.
            self._pending.append(self._fail(BackendFailure.REMOTE_CONFIG, TTL_LOOP_REASON))

    # ------------------------------------------------------------------ I/O

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the backend; ``b""`` = EOF. Bytes arriving while the STARTTLS
        handshake is pending are discarded."""
        st = self.state
        if data and (st is ClientState.TLS_HANDSHAKE or st is ClientState.FAILED):
            return
        self._reader.feed(data)

    def data_to_send(self) -> bytes:
        """Bytes to write to the backend; empties the queue."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def trailing_data(self) -> bytes:
        """After ``BackendLoggedIn``: backend bytes after its login reply, for the client."""
        return self._reader.trailing_data()

    @property
    def state_description(self) -> str:
        """Dovecot's ``<sent states joined by +>/<last received>`` (e.g. ``id+login/banner``),
        for ``Login timed out in state=...`` and ``Disconnected by server ... (state=...)``."""
        sent = "+".join(name for bit, name in _SENT_NAMES if self._sent & bit)
        return sent + "/" + self._rcvd

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS finished; the login is queued next."""
        if self.state is not ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError(f"tls_started() in state {self.state.name}")
        self._reader.discard()
        self._tls = True
        mark = len(self._out)
        ev = self._write_login()
        if ev is not None:
            del self._out[mark:]
            self._pending.append(ev)

    def _transition(self, event: str) -> None:
        try:
            self.state = CLIENT_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event} not allowed in state {self.state.name}") from None

    def _fail(self, kind: BackendFailure, reason: str, line: bytes | None = None) -> BackendLoginFailed:
        self._transition("failed")
        return BackendLoginFailed(kind, reason, line)

    # ------------------------------------------------------------------ events

    def next_event(self) -> Event | type[NEED_DATA]:
        if self._pending:
            return self._pending.popleft()
        st = self.state
        if st is ClientState.LOGGED_IN or st is ClientState.FAILED:
            raise LocalProtocolError(f"the login is over (state {st.name})")
        if st is ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError("call tls_started() after the TLS handshake first")
        reader = self._reader
        while True:
            try:
                line = reader.next_line()
            except RemoteProtocolError:
                return self._fail(BackendFailure.PROTOCOL, "Too long input line")
            if line is None:
                if reader.eof:
                    return self._fail(BackendFailure.CONNECT,
                                      "Disconnected by server: Connection closed")
                return NEED_DATA
            mark = len(self._out)
            ev = self._line(line)
            if ev is not None:
                if isinstance(ev, BackendLoginFailed):
                    # Dovecot builds the whole write first and drops it on failure (e.g.
                    # no ID goes out when LOGINDISABLED refuses the login).
                    del self._out[mark:]
                return ev

    def _line(self, line: bytes) -> Event | None:
        if b"\0" in line:
            line = line[:line.index(b"\0")]  # Dovecot handles lines as C strings
        if self.state is ClientState.BANNER:
            return self._banner(line)
        if line[:1] == b"+":
            return self._continuation(line)
        if line[:2] == b"S " and self._sent & _SENT_STARTTLS:
            self._sent &= ~_SENT_STARTTLS
            self._rcvd = "starttls"
            if line[:5] != b"S OK ":
                return self._fail(BackendFailure.REMOTE, "STARTTLS failed: " + _sanitize(line[5:]))
            self._transition("starttls_accepted")
            return StartTLSRequired()
        if line[:2] == b"L " and self._sent & (_SENT_LOGIN | _SENT_AUTHENTICATE | _SENT_AUTH_CONTINUE):
            self._sent &= ~(_SENT_LOGIN | _SENT_AUTHENTICATE | _SENT_AUTH_CONTINUE)
            self._rcvd = "login"
            if line[:5] == b"L OK ":
                text = line[5:]
                caps = self.capabilities
                if text[:12].upper() == b"[CAPABILITY ":
                    end = text.find(b"]", 12)
                    caps = _split_caps(text[12:] if end < 0 else text[12:end])
                self._transition("logged_in")
                return BackendLoggedIn(line, caps)
            rest = line[2:]
            log = rest[3:] if rest[:3].upper() == b"NO " else rest
            kind = BackendFailure.AUTH
            if rest.startswith(b"NO ["):
                end = rest.find(b"]", 4)
                code = rest[4:] if end < 0 else rest[4:end]
                if code.upper() == b"UNAVAILABLE":
                    kind = BackendFailure.AUTH_TEMPFAIL
            return self._fail(kind, _text(log), line)
        if line[:13].upper() == b"* CAPABILITY ":
            self._set_caps(line[13:])
            return None
        if line[:2] == b"C " and self._sent & _SENT_CAPABILITY:
            self._sent &= ~_SENT_CAPABILITY
            self._rcvd = "capability"
            if line[:5] == b"C OK " and self.state is ClientState.CAPABILITY:
                return self._write_login()  # nopipelining: the login waited for this
            return None
        if line[:2].upper() == b"I " and self._sent & _SENT_ID:
            self._sent &= ~_SENT_ID
            self._rcvd = "id"
            if self.state is ClientState.ID:
                return self._write_starttls_or_login()
            return None
        if line[:5].upper() == b"* ID ":
            return None
        if line[:6] == b"* BYE ":
            return None  # not relayed: the client is not going to be disconnected
        if line[:2] == b"* ":
            return UntaggedRelay(line + _CRLF)
        return None  # Dovecot: "Unexpected input, ignoring"

    def _set_caps(self, raw: bytes) -> None:
        self._caps_raw = raw
        self.capabilities = _split_caps(raw)

    def _banner(self, line: bytes) -> Event | None:
        self._rcvd = "banner"
        if line[:5] != b"* OK ":
            return self._fail(BackendFailure.PROTOCOL, "Invalid banner: " + _sanitize(line))
        login = self.login
        if line[5:17] == b"[CAPABILITY ":
            end = line.find(b"]", 17)
            self._set_caps(line[17:] if end < 0 else line[17:end])
            upper = _upper_caps(self.capabilities or ())
            self._sasl_ir = "SASL-IR" in upper
            self._logindisabled = "LOGINDISABLED" in upper
            if "ID" in upper and self._id is not None:
                args, literals = self._id
                self._out += b"I ID " + args + _CRLF
                self._plus_to_skip += literals
                self._sent |= _SENT_ID
                if login.nopipelining:
                    self._transition("id_sent")  # STARTTLS or login after the I reply
                    return None
        return self._write_starttls_or_login()

    def _write_starttls_or_login(self) -> Event | None:
        if self.login.starttls:
            if self.capabilities is not None and \
                    "STARTTLS" not in _upper_caps(self.capabilities):
                return self._fail(BackendFailure.REMOTE_CONFIG, "STARTTLS not supported")
            self._out += b"S STARTTLS\r\n"
            self._sent |= _SENT_STARTTLS
            self._transition("starttls_sent")
            return None
        return self._write_login()

    def _write_login(self) -> Event | None:
        login = self.login
        # C CAPABILITY when the caps are unknown, or the client asked for them itself (so
        # the success reply can relay them untagged instead of as a resp-code).
        if not self._capability_sent and (self.capabilities is None or login.client_sent_capability):
            self._capability_sent = True
            self._sent |= _SENT_CAPABILITY
            self._out += b"C CAPABILITY\r\n"
            if login.nopipelining:
                self._transition("capability_sent")
                return None
        mech = login.effective_mechanism
        if mech is None:
            if self._logindisabled and not (login.ssl or login.starttls):
                return self._fail(BackendFailure.REMOTE_CONFIG,
                                  "LOGINDISABLED advertised, but SSL/TLS not enabled")
            assert login.password is not None
            user, _ = imap_string(login.destuser)
            password, _ = imap_string(login.password.reveal())
            self._out += b"L LOGIN " + user + b" " + password + _CRLF
            self._sent |= _SENT_LOGIN
            self._transition("login_sent")
            return None
        secret = login.token if (mech in ("XOAUTH2", "OAUTHBEARER") and login.token is not None) \
            else login.password
        assert secret is not None
        self._sasl = ClientExchange(
            mech, authzid=login.destuser,
            authcid=login.master_user if login.master_user is not None else login.destuser,
            password=secret.reveal())
        out = b"L AUTHENTICATE " + mech.encode("ascii")
        if self._sasl_ir:
            ir = self._sasl.output()
            out += b" " + (encode_base64(ir) if ir else b"=")
        self._out += out + _CRLF
        self._sent |= _SENT_AUTHENTICATE
        self._transition("login_sent")
        return None

    def _continuation(self, line: bytes) -> Event | None:
        if self._plus_to_skip:
            self._plus_to_skip -= 1  # "+ OK" for a literal we sent
            return None
        if self._sasl is None or self.state is not ClientState.LOGIN:
            return None  # LOGIN command literals: ignored
        self._sent &= ~_SENT_AUTHENTICATE
        self._rcvd = "auth-continue"
        if line[1:2] != b" ":
            return self._fail(BackendFailure.PROTOCOL, "Invalid base64 data in AUTHENTICATE response")
        try:
            challenge = decode_base64(line[2:])
        except InvalidBase64:
            return self._fail(BackendFailure.PROTOCOL, "Invalid base64 data in AUTHENTICATE response")
        try:
            self._sasl.input(challenge)
            out = self._sasl.output()
        except SaslClientError as e:
            return self._fail(BackendFailure.PROTOCOL, "Invalid authentication data: " + e.msg)
        self._out += encode_base64(out) + _CRLF
        self._sent |= _SENT_AUTH_CONTINUE
        return None


# A backend sends the same capability list on every login: its parse is remembered
# (bounded: a few backends x banner/login-reply variants).
@functools.lru_cache(maxsize=32)
def _upper_caps(caps: tuple[str, ...]) -> frozenset[str]:
    return frozenset(c.upper() for c in caps)


@functools.lru_cache(maxsize=32)
def _split_caps(raw: bytes) -> tuple[str, ...]:
    # Split on single spaces so " ".join() gives the backend's exact bytes back. A "]" is
    # not an atom character: such a token (only from an untagged "* CAPABILITY" line) is
    # dropped, since relaying it inside "[CAPABILITY ...]" would end the code early.
    caps = raw.decode("utf-8", "surrogateescape").split(" ")
    if "]" in raw.decode("latin-1"):
        caps = [c for c in caps if "]" not in c]
    return tuple(caps)
