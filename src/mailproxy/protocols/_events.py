"""The role-independent login-flow events, and the ``NEED_DATA`` sentinel.

Owns: every event class exchanged between a protocol connection (``imap.ServerConnection``,
``imap.ClientConnection``, later POP3/SMTP/ManageSieve) and its driver in ``io/``. The same
classes serve every protocol; how one renders on the wire is the protocol module's business.
Must not import any protocol module, nor socket/ssl/trio/asyncio.

Events are frozen, slotted dataclasses validated when built (cf. h11 ``_events.py``): a bad
field raises ``LocalProtocolError``, since building a bad event is our own code's mistake.
Lines carried in events never contain CR or LF (checked), so rendering them can never
inject a second line.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from ._errors import LocalProtocolError
from ._secret import Secret
from .forwarding import ForwardedFields

__all__ = [
    "NEED_DATA",
    "Event",
    "Credentials",
    "StartTLSRequested",
    "AuthRequested",
    "ClientIdentified",
    "ConnectionEnded",
    "AuthSucceeded",
    "AuthFailed",
    "FailureKind",
    "Referral",
    "Bye",
    "BackendLogin",
    "StartTLSRequired",
    "UntaggedRelay",
    "BackendLoggedIn",
    "BackendLoginFailed",
    "BackendFailure",
]


class _SentinelBase(type):
    # h11's trick: a class whose type is itself, so ``type(NEED_DATA) is NEED_DATA`` and
    # ``next_event() is NEED_DATA`` reads naturally and types as ``type[NEED_DATA]``.
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwds: Any) -> Any:
        assert bases == (_SentinelBase,)
        v = super().__new__(mcls, name, bases, namespace, **kwds)
        v.__class__ = v  # type: ignore[assignment]
        return v

    def __repr__(self) -> str:
        return self.__name__


class NEED_DATA(_SentinelBase, metaclass=_SentinelBase):
    """Returned by ``next_event()`` when more bytes must be received first."""


# ---------------------------------------------------------------------------- helpers

def _fail(msg: str) -> None:
    raise LocalProtocolError(msg)


def _check_str(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        _fail(f"{name} must be str{' or None' if optional else ''}, not {type(value).__name__}")


def _check_line(name: str, value: object, *, optional: bool = False, kind: type = str) -> None:
    # Text we write ourselves may not contain CR, LF or NUL. Lines received from a peer
    # (bytes) may not contain LF or NUL, so rendering them can never start a new line; a
    # bare CR is kept, as Dovecot relays it.
    if value is None and optional:
        return
    if not isinstance(value, kind):
        _fail(f"{name} must be {kind.__name__}, not {type(value).__name__}")
    forbidden: Any = ("\r", "\n", "\0") if kind is str else (b"\n", b"\0")
    for c in forbidden:
        if c in value:  # type: ignore[operator]
            _fail(f"{name} must not contain " + ("CR, LF or NUL" if kind is str else "LF or NUL"))


def _check_secret(name: str, value: object) -> None:
    if value is not None and not isinstance(value, Secret):
        _fail(f"{name} must be a Secret or None, not {type(value).__name__}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        _fail(f"{name} must be bool, not {type(value).__name__}")


class Event:
    """Base class of all events."""

    __slots__ = ()


# ---------------------------------------------------------------------- credentials

@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented to log in.

    ``mechanism`` is the SASL name ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"); the IMAP
    ``LOGIN`` command gives "PLAIN" with ``via_login_command=True`` (as Dovecot turns it into
    SASL PLAIN). ``authcid`` is the authentication identity (the user, or the master user
    when ``authzid`` is set); ``authzid`` is the user to log in as, ``None`` when absent or
    equal to ``authcid`` (Dovecot drops it then too). ``password`` for PLAIN/LOGIN, ``token``
    for XOAUTH2/OAUTHBEARER. Identities are ``str``; bytes that are not UTF-8 are kept as
    ``surrogateescape`` code points (``.encode("utf-8", "surrogateescape")`` gives them back).
    """

    mechanism: str
    authcid: str
    authzid: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    via_login_command: bool = False

    def __post_init__(self) -> None:
        _check_str("mechanism", self.mechanism)
        if not self.mechanism or self.mechanism != self.mechanism.upper():
            _fail("mechanism must be a non-empty upper-case SASL name")
        _check_str("authcid", self.authcid)
        _check_str("authzid", self.authzid, optional=True)
        _check_secret("password", self.password)
        _check_secret("token", self.token)
        _check_bool("via_login_command", self.via_login_command)

    @property
    def user(self) -> str:
        """The user being logged in to: ``authzid`` if given, else ``authcid``."""
        return self.authzid if self.authzid is not None else self.authcid


# ------------------------------------------------------------- server role (client-facing)

@dataclass(frozen=True, slots=True)
class StartTLSRequested(Event):
    """The client asked for STARTTLS and the OK is queued in ``data_to_send()``.

    The driver sends it, runs the TLS handshake, then calls ``conn.tls_started()``. Bytes
    that came after the STARTTLS line are discarded by the connection, never parsed."""


@dataclass(frozen=True, slots=True)
class AuthRequested(Event):
    """The client presented credentials. Answer with ``conn.send(AuthSucceeded(...))`` or
    ``conn.send(AuthFailed(...))``; do not call ``next_event()`` before that."""

    credentials: Credentials

    def __post_init__(self) -> None:
        if not isinstance(self.credentials, Credentials):
            _fail("credentials must be Credentials")


@dataclass(frozen=True, slots=True)
class ClientIdentified(Event):
    """The client sent IMAP ID (POP3/SMTP XCLIENT later).

    ``pairs`` are all (key, value) pairs in order, ``None`` for NIL. ``first`` is True for
    the connection's first ID command: Dovecot applies a trusted peer's ``x-*`` keys from
    the first ID only (``forwarding.ForwardedFields.from_imap_id``), while ``imap_id_retain``
    keeps the pairs of the latest one (``forwarding.retained_id_pairs``). The driver decides
    whether the peer is trusted."""

    pairs: tuple[tuple[str, str | None], ...]
    first: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.pairs, tuple):
            _fail("pairs must be a tuple")
        for p in self.pairs:
            if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                    and (p[1] is None or isinstance(p[1], str))):
                _fail("pairs must be (str, str | None) tuples")
        _check_bool("first", self.first)


@dataclass(frozen=True, slots=True)
class ConnectionEnded(Event):
    """The session is over (LOGOUT, EOF, too many bad commands, a Bye sent). Final bytes,
    if any, are in ``data_to_send()``. ``reason`` is for the log."""

    reason: str

    def __post_init__(self) -> None:
        _check_str("reason", self.reason)


# -------------------------------------------------------------- client role (backend-facing)

_CLIENT_MECHANISMS = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"})


@dataclass(frozen=True, slots=True)
class BackendLogin:
    """Everything a client-role connection needs to log in to one backend.

    ``destuser`` is sent verbatim; ``password`` is the password to send (passdb ``pass`` or
    the client's); ``master_user`` (passdb ``master``) makes the login
    ``AUTHENTICATE PLAIN destuser\\0master\\0pass``; ``mechanism`` is passdb ``proxy_mech``
    (None: IMAP ``LOGIN``, or PLAIN with a master user); ``starttls`` / ``ssl``: passdb
    ``starttls=`` / ``ssl=`` (``ssl`` = the link is already TLS, which lifts the
    LOGINDISABLED refusal); ``nopipelining`` / ``not_trusted``: ``proxy_nopipelining`` /
    ``proxy_not_trusted``; ``forwarded``: the client's address and session data sent in ID
    / XCLIENT (None: send none); ``client_sent_capability``: the client issued a pre-login
    CAPABILITY before STARTTLS (``imap.ServerConnection.client_sent_capability``); ``token``
    is sent instead of ``password`` by XOAUTH2/OAUTHBEARER when given.

    An unknown ``mechanism`` raises ``LocalProtocolError("Unsupported SASL mechanism X")``
    (Dovecot: INTERNAL failure, client sees ``[UNAVAILABLE]``).
    """

    destuser: str
    password: Secret | None = None
    master_user: str | None = None
    mechanism: str | None = None
    starttls: bool = False
    nopipelining: bool = False
    not_trusted: bool = False
    forwarded: ForwardedFields | None = None
    client_sent_capability: bool = False
    token: Secret | None = None
    ssl: bool = False

    def __post_init__(self) -> None:
        _check_line("destuser", self.destuser)
        _check_secret("password", self.password)
        _check_secret("token", self.token)
        _check_line("master_user", self.master_user, optional=True)
        if self.master_user == "":
            object.__setattr__(self, "master_user", None)  # Dovecot ignores an empty master
        if self.mechanism is not None:
            _check_str("mechanism", self.mechanism)
            mech = self.mechanism.upper()
            if mech not in _CLIENT_MECHANISMS:
                _fail(f"Unsupported SASL mechanism {self.mechanism}")
            object.__setattr__(self, "mechanism", mech)
        if not (type(self.starttls) is bool and type(self.nopipelining) is bool
                and type(self.not_trusted) is bool and type(self.client_sent_capability) is bool
                and type(self.ssl) is bool):
            for name in ("starttls", "nopipelining", "not_trusted", "client_sent_capability",
                         "ssl"):
                _check_bool(name, getattr(self, name))
        if self.forwarded is not None and not isinstance(self.forwarded, ForwardedFields):
            _fail("forwarded must be ForwardedFields or None")
        for name in ("password", "token"):
            s = getattr(self, name)
            if s is not None:
                v = s.reveal()
                if (isinstance(v, str) and "\0" in v) or (isinstance(v, bytes) and b"\0" in v):
                    _fail(f"{name} must not contain NUL")
        if self.effective_mechanism in ("XOAUTH2", "OAUTHBEARER"):
            if self.token is None and self.password is None:
                _fail("a token (or password) is required for " + str(self.mechanism))
        elif self.password is None:
            _fail("password not given")

    @property
    def effective_mechanism(self) -> str | None:
        """The SASL mechanism that will be used (None: the protocol's plain login)."""
        if self.mechanism is not None:
            return self.mechanism
        return "PLAIN" if self.master_user is not None else None


@dataclass(frozen=True, slots=True)
class StartTLSRequired(Event):
    """The backend accepted STARTTLS: do the TLS handshake, then ``conn.tls_started()``
    (buffered bytes are discarded) and send ``data_to_send()``."""


@dataclass(frozen=True, slots=True)
class UntaggedRelay(Event):
    """An untagged backend line that Dovecot relays to the client during the login (e.g.
    ``* OK [ALERT] ...``): ``line`` is the exact bytes to send, CRLF included (so is
    ``imap.ServerConnection.send(event)``)."""

    line: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.line, bytes) or not self.line.endswith(b"\r\n"):
            _fail("line must be bytes ending in CRLF")
        _check_line("line", self.line[:-2], kind=bytes)


_BAD_CAPABILITY = re.compile(r"[ \]\n\0]")


@dataclass(frozen=True, slots=True)
class BackendLoggedIn(Event):
    """The backend accepted the login. ``line`` is its tagged OK line (without CRLF);
    ``capabilities``: those of a ``[CAPABILITY ...]`` code in it, else the last ones the
    backend announced (banner or ``* CAPABILITY``), None if it never did. Then the
    connection's ``trailing_data()`` goes to the client first in the relay."""

    line: bytes
    capabilities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_line("line", self.line, kind=bytes)
        if self.capabilities is not None:
            if not isinstance(self.capabilities, tuple):
                _fail("capabilities must be a tuple of str or None")
            # One join and one regex pass over all names: this runs on every login.
            try:
                joined = "\r".join(self.capabilities)   # TypeError unless all are str
            except TypeError:
                joined = " "
            if _BAD_CAPABILITY.search(joined):
                _fail("a capability must be str without space, ']', LF or NUL")


class BackendFailure(enum.Enum):
    """Failure types, Dovecot's ``login_proxy_failure_type`` (wire §0.2)."""

    CONNECT = "connect"              # connect/timeout/backend closed before login: reconnect
    INTERNAL = "internal"            # our side (TLS setup, SASL): no reconnect
    REMOTE = "remote"                # backend refused STARTTLS: reconnect
    REMOTE_CONFIG = "remote_config"  # TTL loop, STARTTLS/LOGIN not possible: no reconnect
    PROTOCOL = "protocol"            # bad banner, bad base64, line too long: reconnect
    AUTH = "auth"                    # backend refused the credentials: no reconnect
    AUTH_TEMPFAIL = "auth_tempfail"  # backend NO [UNAVAILABLE]: reconnect


@dataclass(frozen=True, slots=True)
class BackendLoginFailed(Event):
    """The backend login failed. ``reason`` is the log text (e.g. ``Invalid banner: ...``);
    ``line`` is the backend's tagged failure line (without CRLF) when there was one."""

    kind: BackendFailure
    reason: str
    line: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, BackendFailure):
            _fail("kind must be a BackendFailure")
        _check_str("reason", self.reason)
        _check_line("line", self.line, optional=True, kind=bytes)


# ---------------------------------------------------------- replies the driver sends

class FailureKind(enum.Enum):
    """Why a login is refused (``AuthFailed.kind``)."""

    AUTH_FAILED = "auth_failed"            # passdb refusal; text = passdb reason
    TEMPFAIL = "tempfail"                  # passdb temporary failure
    NOLOGIN = "nologin"                    # passdb nologin; text = reason
    REFERRAL = "referral"                  # nologin + host: referral = Referral(...)
    BACKEND = "backend"                    # the backend's failure: backend = BackendLoginFailed
    UNAVAILABLE = "unavailable"            # proxy-side connect/internal/remote/protocol failure
    CONFIG = "config"                      # *_CONFIG, SERVERBUG
    PRIVACY_REQUIRED = "privacy_required"  # TLS required


@dataclass(frozen=True, slots=True)
class Referral:
    """A login referral (passdb ``nologin`` + ``host``)."""

    destuser: str
    host: str
    port: int = 143
    reason: str | None = None
    mechanism: str | None = None   # None: the mechanism the client used

    def __post_init__(self) -> None:
        _check_line("destuser", self.destuser)
        _check_line("mechanism", self.mechanism, optional=True)
        _check_line("host", self.host)
        if not self.host or any(c in self.host for c in " /@"):
            _fail("host must be a non-empty host name or IP")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            _fail("port must be an int in 1..65535")
        _check_line("reason", self.reason, optional=True)


@dataclass(frozen=True, slots=True)
class AuthSucceeded(Event):
    """Answer to ``AuthRequested``: the backend login succeeded."""

    backend: BackendLoggedIn

    def __post_init__(self) -> None:
        if not isinstance(self.backend, BackendLoggedIn):
            _fail("backend must be BackendLoggedIn")


@dataclass(frozen=True, slots=True)
class AuthFailed(Event):
    """Answer to ``AuthRequested``: the login is refused; the client may try again.

    ``text`` overrides the default text of the kind (for AUTH_FAILED it is the passdb
    ``reason``, shown as ``[ALERT] reason``). REFERRAL needs ``referral``; BACKEND needs
    ``backend``."""

    kind: FailureKind
    text: str | None = None
    backend: BackendLoginFailed | None = None
    referral: Referral | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FailureKind):
            _fail("kind must be a FailureKind")
        _check_line("text", self.text, optional=True)
        if self.backend is not None and not isinstance(self.backend, BackendLoginFailed):
            _fail("backend must be BackendLoginFailed or None")
        if self.referral is not None and not isinstance(self.referral, Referral):
            _fail("referral must be Referral or None")
        if self.kind is FailureKind.REFERRAL and self.referral is None:
            _fail("kind REFERRAL needs referral")
        if self.kind is FailureKind.BACKEND and self.backend is None:
            _fail("kind BACKEND needs backend")


@dataclass(frozen=True, slots=True)
class Bye(Event):
    """End the session with a final message (``* BYE <text>`` in IMAP), e.g.
    "Disconnected for inactivity." on the login timeout, "Shutting down"."""

    text: str

    def __post_init__(self) -> None:
        _check_line("text", self.text)
