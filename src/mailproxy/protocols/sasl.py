"""SASL mechanisms for both roles, protocol-neutral.

Owns: decoding a client's SASL responses into ``Credentials`` (server role: PLAIN, LOGIN,
XOAUTH2, OAUTHBEARER, as Dovecot's ``src/auth/mech-*.c`` parse them) and producing the
responses a proxy sends to a backend (client role: Dovecot's ``src/lib-sasl``). Each
protocol wraps the base64 its own way (IMAP ``+ ``/``AUTHENTICATE``, POP3 ``AUTH``, SMTP
``334``, ManageSieve strings); this module only deals in raw bytes plus the shared base64
and ``*`` (abort) rules. Must not import io code or any protocol connection module.
"""

from __future__ import annotations

import binascii
import json

from ._events import Credentials
from ._secret import Secret

__all__ = [
    "SERVER_MECHANISMS",
    "CLIENT_MECHANISMS",
    "LOGIN_USERNAME_CHALLENGE",
    "LOGIN_PASSWORD_CHALLENGE",
    "SaslError",
    "SaslAborted",
    "InvalidBase64",
    "MalformedResponse",
    "SaslClientError",
    "decode_base64",
    "encode_base64",
    "decode_response",
    "decode_plain",
    "decode_xoauth2",
    "decode_oauthbearer",
    "ServerExchange",
    "plain_response",
    "login_responses",
    "xoauth2_response",
    "oauthbearer_response",
    "ClientExchange",
]

SERVER_MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
"""Mechanisms ``ServerExchange`` can decode."""

CLIENT_MECHANISMS: frozenset[str] = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"})
"""Mechanisms ``ClientExchange`` can speak (passdb ``proxy_mech``)."""

LOGIN_USERNAME_CHALLENGE = b"Username:"   # base64 "VXNlcm5hbWU6"
LOGIN_PASSWORD_CHALLENGE = b"Password:"   # base64 "UGFzc3dvcmQ6"

_B64_WHITESPACE = bytes.maketrans(b"", b"")


class SaslError(Exception):
    """Base class of SASL errors; ``msg`` is Dovecot's text where one exists."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class SaslAborted(SaslError):
    """The client answered ``*``."""


class InvalidBase64(SaslError):
    """The response is not valid base64."""


class MalformedResponse(SaslError):
    """The decoded response is not valid for the mechanism (Dovecot: an authentication
    failure, ``NO [AUTHENTICATIONFAILED] Authentication failed.`` in IMAP)."""


class SaslClientError(SaslError):
    """Client role: the server's challenge makes no sense (Dovecot logs
    ``Invalid authentication data: <msg>``, a PROTOCOL failure)."""


# --------------------------------------------------------------------------- base64

def decode_base64(data: bytes) -> bytes:
    """Strict base64 with padding, whitespace ignored (Dovecot ``base64_decode``)."""
    data = data.translate(_B64_WHITESPACE, b" \t\r\n")
    if len(data) % 4:
        raise InvalidBase64("Invalid base64 data")   # missing or excess padding
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64("Invalid base64 data") from None


def encode_base64(data: bytes) -> bytes:
    """Base64 with padding, no newlines."""
    return binascii.b2a_base64(data, newline=False)


def decode_response(line: bytes) -> bytes:
    """A client's continuation line: ``*`` raises :class:`SaslAborted`, bad base64
    :class:`InvalidBase64`; else the decoded bytes."""
    if line == b"*":
        raise SaslAborted("Authentication aborted by client.")
    return decode_base64(line)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _enc(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------- server role

def decode_plain(data: bytes) -> Credentials:
    """``authzid \\0 authcid \\0 password`` (RFC 4616, Dovecot ``mech-plain.c``): exactly
    two NULs and a non-empty authcid; an authzid equal to authcid counts as absent."""
    fields = data.split(b"\0")
    if len(fields) != 3 or not fields[1]:
        raise MalformedResponse("invalid input")
    authzid, authcid, password = fields
    if authzid == authcid or not authzid:
        authzid_s = None
    else:
        authzid_s = _text(authzid)
    return Credentials("PLAIN", _text(authcid), authzid_s, Secret(_text(password)))


def _bearer(value: str) -> str | None:
    # "auth=Bearer <token>": case-insensitive scheme, token non-empty without CR/LF
    # (Dovecot oauth2_valid_token).
    if value[:7].lower() != "bearer ":
        return None
    token = value[7:]
    if not token or "\r" in token or "\n" in token:
        return None
    return token


def decode_xoauth2(data: bytes) -> Credentials:
    """``user=<user>^Aauth=Bearer <token>^A^A`` (Dovecot ``mech_xoauth2_auth_continue``)."""
    if b"\0" in data:
        raise MalformedResponse("invalid input")
    user: str | None = None
    token: str | None = None
    for field in _text(data).split("\x01"):
        if field.startswith("user="):
            user = field[5:]
        elif field.startswith("auth="):
            token = _bearer(field[5:])
            if token is None:
                raise MalformedResponse("Invalid continued data")
    if not user or token is None:
        raise MalformedResponse("Username or token missing")
    return Credentials("XOAUTH2", user, None, None, Secret(token))


def _unescape_saslname(value: str) -> str | None:
    # RFC 5801 saslname: "=2C" -> ",", "=3D" -> "=", a bare "," or other "=" is invalid.
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == ",":
            return None
        if c == "=":
            esc = value[i + 1:i + 3]
            if esc == "2C":
                out.append(",")
            elif esc == "3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def decode_oauthbearer(data: bytes) -> Credentials:
    """``n,a=<user>,^A[key=value^A...]auth=Bearer <token>^A^A`` (RFC 7628, Dovecot
    ``mech_oauthbearer_auth_continue``; channel binding is refused)."""
    if b"\0" in data:
        raise MalformedResponse("invalid input")
    fields = _text(data).split("\x01")
    if not fields[0]:
        raise MalformedResponse("Invalid continued data")
    user: str | None = None
    for item in (f for f in fields[0].split(",") if f):
        c = item[0]
        if c in "fp":
            raise MalformedResponse("Client requested non-standard mechanism or channel-binding")
        if c in "ny":
            continue
        if c == "a":
            if item[1:2] != "=":
                raise MalformedResponse("Invalid username escaping")
            user = _unescape_saslname(item[2:])
            if user is None:
                raise MalformedResponse("Invalid username escaping")
            continue
        raise MalformedResponse("Invalid gs2-header in request")
    token: str | None = None
    for field in fields:
        if field.startswith("auth="):
            token = _bearer(field[5:])
            if token is None:
                raise MalformedResponse("Invalid continued data")
    if not user or token is None:
        raise MalformedResponse("Missing username or token")
    return Credentials("OAUTHBEARER", user, None, None, Secret(token))


class ServerExchange:
    """One server-side SASL exchange.

    ``start(initial)`` takes the decoded initial response (None when the client sent none)
    and ``step(response)`` each decoded continuation response. Both return either bytes (a
    challenge to send, base64-encoded by the protocol) or the final :class:`Credentials`,
    and raise :class:`MalformedResponse` for input the mechanism refuses.

    Challenges follow Dovecot: PLAIN/XOAUTH2/OAUTHBEARER without initial response get an
    empty challenge; LOGIN asks ``Username:`` (also for an empty initial response, which
    Dovecot treats the same) then ``Password:``.
    """

    __slots__ = ("mechanism", "_username")

    def __init__(self, mechanism: str) -> None:
        mech = mechanism.upper()
        if mech not in SERVER_MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mech
        self._username: str | None = None

    def start(self, initial: bytes | None) -> bytes | Credentials:
        if self.mechanism == "LOGIN":
            if not initial:
                return LOGIN_USERNAME_CHALLENGE
            return self.step(initial)
        if initial is None:
            return b""
        return self.step(initial)

    def step(self, response: bytes) -> bytes | Credentials:
        mech = self.mechanism
        if mech == "PLAIN":
            return decode_plain(response)
        if mech == "LOGIN":
            if b"\0" in response:
                raise MalformedResponse("invalid input")
            if self._username is None:
                if not response:
                    raise MalformedResponse("Empty username")
                self._username = _text(response)
                return LOGIN_PASSWORD_CHALLENGE
            return Credentials("LOGIN", self._username, None, Secret(_text(response)))
        if mech == "XOAUTH2":
            return decode_xoauth2(response)
        return decode_oauthbearer(response)


# --------------------------------------------------------------------- client role

def plain_response(authzid: str | bytes | None, authcid: str | bytes,
                   password: str | bytes) -> bytes:
    """``authzid \\0 authcid \\0 password`` (Dovecot's proxy always sets authzid =
    destuser, authcid = master user or destuser)."""
    return (_enc(authzid) if authzid else b"") + b"\0" + _enc(authcid) + b"\0" + _enc(password)


def login_responses(authcid: str | bytes, password: str | bytes) -> tuple[bytes, bytes]:
    """The LOGIN mechanism's two answers (to ``Username:`` and ``Password:``)."""
    return _enc(authcid), _enc(password)


def xoauth2_response(user: str | bytes, token: str | bytes) -> bytes:
    """``user=<user>^Aauth=Bearer <token>^A^A``."""
    return b"user=" + _enc(user) + b"\x01auth=Bearer " + _enc(token) + b"\x01\x01"


def _escape_saslname(value: bytes) -> bytes:
    return value.replace(b"=", b"=3D").replace(b",", b"=2C")


def oauthbearer_response(user: str | bytes, token: str | bytes, host: str | None = None,
                         port: int | None = None) -> bytes:
    """``n,a=<user>,^A[host=..^A][port=..^A]auth=Bearer <token>^A^A``. The user is
    RFC 5801-escaped (``,``→``=2C``, ``=``→``=3D``); Dovecot's own client does not
    escape, which only differs for names containing those characters."""
    out = b"n,a=" + _escape_saslname(_enc(user)) + b",\x01"
    if host:
        out += b"host=" + _enc(host) + b"\x01"
    if port:
        out += b"port=%d\x01" % port
    return out + b"auth=Bearer " + _enc(token) + b"\x01\x01"


class ClientExchange:
    """One client-side SASL exchange with Dovecot ``dsasl-client`` semantics.

    ``output()`` gives the next response to send (the initial response first);
    ``input(challenge)`` feeds a decoded server challenge and raises
    :class:`SaslClientError` (Dovecot's texts) when it makes no sense. Call ``output()``
    after each successful ``input()``.
    """

    __slots__ = ("mechanism", "_authzid", "_authcid", "_secret", "_state", "_output_sent")

    def __init__(self, mechanism: str, *, authcid: str | bytes, password: str | bytes,
                 authzid: str | bytes | None = None) -> None:
        mech = mechanism.upper()
        if mech not in CLIENT_MECHANISMS:
            raise ValueError(f"Unsupported SASL mechanism {mechanism}")
        self.mechanism = mech
        self._authzid = authzid
        self._authcid = authcid
        self._secret = password
        self._state = 0           # LOGIN: 0 init, 1 user, 2 pass
        self._output_sent = False

    def output(self) -> bytes:
        mech = self.mechanism
        if mech == "LOGIN":
            if self._state == 0:
                return b""
            return _enc(self._authcid) if self._state == 1 else _enc(self._secret)
        self._output_sent = True
        if mech == "PLAIN":
            return plain_response(self._authzid, self._authcid, self._secret)
        if mech == "XOAUTH2":
            return xoauth2_response(self._authcid, self._secret)
        return oauthbearer_response(self._authcid, self._secret)

    def input(self, challenge: bytes) -> None:
        mech = self.mechanism
        if mech == "LOGIN":
            if self._state == 2:
                raise SaslClientError("Server didn't finish authentication")
            self._state += 1
            return
        if not self._output_sent:
            if challenge:
                raise SaslClientError("Server sent non-empty initial response")
            return
        if mech == "PLAIN":
            raise SaslClientError("Server didn't finish authentication")
        # XOAUTH2 / OAUTHBEARER: an empty challenge after our response means success;
        # anything else is the JSON error document.
        if not challenge:
            return
        try:
            doc = json.loads(challenge)
        except (ValueError, UnicodeDecodeError):
            raise SaslClientError("Error parsing JSON reply: Invalid JSON") from None
        status = doc.get("status") if isinstance(doc, dict) else None
        if isinstance(status, bool) or not isinstance(status, (str, int, float)):
            raise SaslClientError("Error parsing JSON reply: Status value missing")
        raise SaslClientError(f"Failed to authenticate: {status}")
