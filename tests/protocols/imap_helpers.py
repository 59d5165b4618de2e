"""Helpers for the sans-io protocol tests: drive a connection with bytes, collect events
and output (cf. h11 ``tests/helpers.py`` and its ``ConnectionPair``)."""

from __future__ import annotations

from typing import Callable, Iterable

from mailproxy.protocols import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    ConnectionEnded,
    Event,
    FailureKind,
    ForwardedFields,
    RemoteProtocolError,
    StartTLSRequested,
    StartTLSRequired,
    imap,
)

FWD = ForwardedFields("SESSIONID0000000", "192.0.2.1", 40000, "198.51.100.1", 143)

Answer = Callable[[AuthRequested], Event]


def fail_all(ev: AuthRequested) -> Event:
    return AuthFailed(FailureKind.AUTH_FAILED)


def succeed(line: bytes = b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in",
            caps: tuple[str, ...] | None = ("IMAP4rev1", "IDLE")) -> Answer:
    def answer(ev: AuthRequested) -> Event:
        return AuthSucceeded(BackendLoggedIn(line, caps))
    return answer


def server(**kw: object) -> imap.ServerConnection:
    kw.setdefault("disable_plaintext_auth", False)
    conn = imap.ServerConnection(**kw)  # type: ignore[arg-type]
    conn.data_to_send()  # drop the greeting
    return conn


def run_server(conn: imap.ServerConnection, chunks: Iterable[bytes],
               answer: Answer = fail_all, *, tls: bool = True,
               eof: bool = False) -> tuple[list[Event], bytes]:
    """Feed *chunks* one at a time; after each, pull events until NEED_DATA. AuthRequested
    is answered with ``answer``; StartTLSRequested with ``tls_started()``. Returns the
    events (NEED_DATA excluded) and everything the connection wanted to send."""
    events: list[Event] = []
    out = bytearray()

    def pump() -> bool:
        while True:
            if conn.state is imap.ServerState.PROXYING:
                return False
            ev = conn.next_event()
            out.extend(conn.data_to_send())
            if ev is NEED_DATA:
                return True
            events.append(ev)  # type: ignore[arg-type]
            if isinstance(ev, ConnectionEnded):
                return False
            if isinstance(ev, AuthRequested):
                out.extend(conn.send(answer(ev)))
            elif isinstance(ev, StartTLSRequested) and tls:
                conn.tls_started()
                out.extend(conn.data_to_send())

    going = True
    for chunk in chunks:
        if not going:
            break
        conn.receive_data(chunk)
        going = pump()
    if eof and going:
        conn.receive_data(b"")
        pump()
    return events, bytes(out)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def run_client(conn: imap.ClientConnection, chunks: Iterable[bytes],
               *, eof: bool = False) -> tuple[list[Event], bytes]:
    """Feed backend bytes; returns events and the bytes the client role wrote."""
    events: list[Event] = []
    out = bytearray()

    def pump() -> bool:
        while True:
            ev = conn.next_event()
            out.extend(conn.data_to_send())
            if ev is NEED_DATA:
                return True
            events.append(ev)  # type: ignore[arg-type]
            if isinstance(ev, (BackendLoggedIn, BackendLoginFailed)):
                return False
            if isinstance(ev, StartTLSRequired):
                conn.tls_started()
                out.extend(conn.data_to_send())

    going = pump()
    for chunk in chunks:
        if not going:
            break
        conn.receive_data(chunk)
        going = pump()
    if eof and going:
        conn.receive_data(b"")
        pump()
    return events, bytes(out)


def login(**kw: object) -> BackendLogin:
    from mailproxy.protocols import Secret

    kw.setdefault("destuser", "alice")
    kw.setdefault("password", Secret("alicepw"))
    kw.setdefault("forwarded", FWD)
    return BackendLogin(**kw)  # type: ignore[arg-type]


def protocol_error(conn: imap.ServerConnection, data: bytes) -> RemoteProtocolError:
    conn.receive_data(data)
    try:
        while conn.next_event() is not NEED_DATA:
            pass
    except RemoteProtocolError as e:
        return e
    raise AssertionError("no RemoteProtocolError")
