"""Both roles against each other (h11's ConnectionPair): our ClientConnection logs in to
our ServerConnection, as when one trio-mailproxy proxies to another."""

from __future__ import annotations

import pytest

from imap_helpers import FWD
from mailproxy.protocols import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    BackendFailure,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    ClientIdentified,
    Credentials,
    Event,
    FailureKind,
    ForwardedFields,
    Secret,
    StartTLSRequested,
    StartTLSRequired,
    imap,
)
from mailproxy.protocols.forwarding import from_imap_id


class ConnectionPair:
    """Moves bytes between a client role and a server role until the login ends."""

    def __init__(self, login: BackendLogin, answer: Event | None = None, **server_kw: object) -> None:
        server_kw.setdefault("greeting", "backend ready.")
        self.client = imap.ClientConnection(login)
        self.server = imap.ServerConnection(**server_kw)  # type: ignore[arg-type]
        self.answer = answer
        self.server_events: list[Event] = []
        self.client_events: list[Event] = []
        self.wire: list[bytes] = []

    def run(self) -> Event:
        to_client = self.server.data_to_send()
        to_server = b""
        for _ in range(100):
            if to_client:
                self.wire.append(b"S: " + to_client)
                self.client.receive_data(to_client)
                to_client = b""
            ev = self.client.next_event()
            to_server += self.client.data_to_send()
            if ev is not NEED_DATA:
                self.client_events.append(ev)  # type: ignore[arg-type]
                if isinstance(ev, (BackendLoggedIn, BackendLoginFailed)):
                    return ev  # type: ignore[return-value]
                if isinstance(ev, StartTLSRequired):
                    self.client.tls_started()
                    to_server += self.client.data_to_send()
                continue
            if to_server:
                self.wire.append(b"C: " + to_server)
                self.server.receive_data(to_server)
                to_server = b""
            while True:
                sev = self.server.next_event()
                to_client += self.server.data_to_send()
                if sev is NEED_DATA:
                    break
                self.server_events.append(sev)  # type: ignore[arg-type]
                if isinstance(sev, StartTLSRequested):
                    # the OK must reach the client before the handshake
                    self.client.receive_data(to_client)
                    to_client = b""
                    self.server.tls_started()
                elif isinstance(sev, AuthRequested):
                    to_client += self.server.send(self.answer or AuthSucceeded(
                        BackendLoggedIn(b"X OK Logged in", ("IMAP4rev1", "IDLE"))))
                    break
        raise AssertionError("no end of login")

    @property
    def credentials(self) -> Credentials:
        (ev,) = [e for e in self.server_events if isinstance(e, AuthRequested)]
        return ev.credentials


def pw_login(**kw: object) -> BackendLogin:
    kw.setdefault("destuser", "alice")
    kw.setdefault("password", Secret("alicepw"))
    kw.setdefault("forwarded", FWD)
    return BackendLogin(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, server_kw, creds", [
    ({}, {"disable_plaintext_auth": False},
     Credentials("PLAIN", "alice", None, Secret("alicepw"), None, True)),
    ({"password": Secret('we"ird \\ pass')}, {"disable_plaintext_auth": False},
     Credentials("PLAIN", "alice", None, Secret('we"ird \\ pass'), None, True)),
    ({"password": Secret("p\u00e4ss\r\nword")}, {"disable_plaintext_auth": False},
     Credentials("PLAIN", "alice", None, Secret("p\u00e4ss\r\nword"), None, True)),
    ({"mechanism": "PLAIN"}, {"secured": True},
     Credentials("PLAIN", "alice", None, Secret("alicepw"))),
    ({"master_user": "admin", "password": Secret("mpw")}, {"secured": True},
     Credentials("PLAIN", "admin", "alice", Secret("mpw"))),
    ({"mechanism": "LOGIN"}, {"secured": True, "mechanisms": ["LOGIN"]},
     Credentials("LOGIN", "alice", None, Secret("alicepw"))),
    ({"mechanism": "XOAUTH2", "token": Secret("tok")}, {"secured": True, "mechanisms": ["XOAUTH2"]},
     Credentials("XOAUTH2", "alice", None, None, Secret("tok"))),
    ({"mechanism": "OAUTHBEARER", "token": Secret("tok")},
     {"secured": True, "mechanisms": ["OAUTHBEARER"]},
     Credentials("OAUTHBEARER", "alice", None, None, Secret("tok"))),
    # without SASL-IR on the backend: "+ " continuations
    ({"mechanism": "PLAIN"}, {"secured": True, "capability_override": "IMAP4rev1 ID LITERAL+"},
     Credentials("PLAIN", "alice", None, Secret("alicepw"))),
    ({"mechanism": "LOGIN"}, {"secured": True, "capability_override": "IMAP4rev1 ID",
                              "mechanisms": ["LOGIN"]},
     Credentials("LOGIN", "alice", None, Secret("alicepw"))),
    ({"nopipelining": True}, {"disable_plaintext_auth": False},
     Credentials("PLAIN", "alice", None, Secret("alicepw"), None, True)),
    ({"nopipelining": True, "client_sent_capability": True}, {"disable_plaintext_auth": False},
     Credentials("PLAIN", "alice", None, Secret("alicepw"), None, True)),
    # STARTTLS first, then LOGIN inside TLS (LOGINDISABLED before it)
    ({"starttls": True}, {"tls_available": True},
     Credentials("PLAIN", "alice", None, Secret("alicepw"), None, True)),
    ({"starttls": True, "nopipelining": True}, {"tls_available": True},
     Credentials("PLAIN", "alice", None, Secret("alicepw"), None, True)),
])
def test_login_through_both_roles(kw: dict[str, object], server_kw: dict[str, object],
                                  creds: Credentials) -> None:
    pair = ConnectionPair(pw_login(**kw), **server_kw)
    result = pair.run()
    assert isinstance(result, BackendLoggedIn), (result, pair.wire)
    assert pair.credentials == creds
    if kw.get("client_sent_capability"):
        # the server saw our C CAPABILITY: caps come untagged, the OK line unchanged
        assert result.line == b"L OK Logged in"
    else:
        assert result.line == b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
    assert result.capabilities == ("IMAP4rev1", "IDLE")


def test_forwarded_fields_survive_both_roles() -> None:
    fwd = ForwardedFields("upstream-1", "2001:db8::7", 4242, "192.0.2.1", 993, ttl=4,
                          forward=(("tenant", "blue"), ("q", 'a"b\\c'), ("ml", "l1\r\nl2"),
                                   ("utf", "\u00e9")))
    pair = ConnectionPair(pw_login(forwarded=fwd), disable_plaintext_auth=False)
    assert isinstance(pair.run(), BackendLoggedIn)
    (ident,) = [e for e in pair.server_events if isinstance(e, ClientIdentified)]
    base = ForwardedFields("local", "10.0.0.1", 1, "10.0.0.2", 143)
    got = from_imap_id(ident.pairs, base)
    # the next hop sees the same values, with the TTL one lower
    assert got == ForwardedFields("upstream-1", "2001:db8::7", 4242, "192.0.2.1", 993, 3,
                                  fwd.forward)


def test_logindisabled_backend_without_tls_is_refused() -> None:
    pair = ConnectionPair(pw_login())   # server insecure: LOGINDISABLED
    result = pair.run()
    assert result == BackendLoginFailed(BackendFailure.REMOTE_CONFIG,
                                        "LOGINDISABLED advertised, but SSL/TLS not enabled")
    assert pair.wire == [pair.wire[0]]   # nothing was sent


@pytest.mark.parametrize("answer, kind, reason", [
    (AuthFailed(FailureKind.AUTH_FAILED), BackendFailure.AUTH,
     "[AUTHENTICATIONFAILED] Authentication failed."),
    (AuthFailed(FailureKind.TEMPFAIL, "busy"), BackendFailure.AUTH_TEMPFAIL, "[UNAVAILABLE] busy"),
    (AuthFailed(FailureKind.NOLOGIN), BackendFailure.AUTH,
     "[CONTACTADMIN] Login disabled for this user"),
    (AuthFailed(FailureKind.CONFIG), BackendFailure.AUTH,
     "[SERVERBUG] Account is temporarily unavailable."),
])
def test_failures_through_both_roles(answer: AuthFailed, kind: BackendFailure, reason: str) -> None:
    pair = ConnectionPair(pw_login(), answer, disable_plaintext_auth=False)
    result = pair.run()
    assert isinstance(result, BackendLoginFailed)
    assert (result.kind, result.reason) == (kind, reason)
    assert result.line == b"L NO " + reason.encode()
