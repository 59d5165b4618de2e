"""Replay the Dovecot 2.3 transcripts in spec/imap/*.txt through both roles.

Each transcript (spec/README.md) records what a real Dovecot imap-login proxy sent on both
legs. The client leg's ``C>P`` lines go into ``imap.ServerConnection``, the backend leg's
``S>P`` lines into one ``imap.ClientConnection`` per backend connection, and every ``P>C``
/ ``P>S`` line the proxy sent during the login must come out byte for byte. The small
driver below plays io/'s part (passdb fields from the ``# passdb:`` header, trust from
``# login_trusted_networks:``, Dovecot's reconnect rule); after a successful login the
rest of each leg is the blind relay and is not ours to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailproxy import __version__
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
    ConnectionEnded,
    Credentials,
    Event,
    FailureKind,
    ForwardedFields,
    Secret,
    StartTLSRequired,
    UntaggedRelay,
    imap,
)
from mailproxy.protocols.forwarding import from_imap_id
from tests.support import transcripts

SPEC = transcripts.SPEC_DIR
CLIENT_PORT, PROXY_PORT = 40001, 143
RECONNECT_KINDS = {BackendFailure.CONNECT, BackendFailure.PROTOCOL, BackendFailure.REMOTE,
                   BackendFailure.AUTH_TEMPFAIL}
OUR_ID_REPLY = '* ID ("name" "trio-mailproxy" "version" "%s")' % __version__


@dataclass
class Scenario:
    name: str
    passdb: dict[str, str] = field(default_factory=dict)
    trusted: bool = False
    client: list[tuple[str, str]] = field(default_factory=list)
    backend: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> Scenario:
    t = transcripts.parse(path)
    sc = Scenario(t.name, t.passdb, bool(t.trusted_networks))
    for kind, text in t.client:
        if kind in ("C>P", "P>C"):
            sc.client.append(("in" if kind == "C>P" else "out", text))
    for connection in t.backend:
        sc.backend.append(("connect", "connect"))
        for kind, text in connection:
            if kind in ("S>P", "P>S"):
                sc.backend.append(("in" if kind == "S>P" else "out", text))
            elif kind == "tls":
                sc.backend.append(("tls", "tls"))
            elif kind == "close":
                sc.backend.append(("eof" if text == "by server" else "closed",
                                   "close " + text))
    return sc


def expected(line: str) -> bytes:
    if line == '* ID ("name" "Dovecot")':
        line = OUR_ID_REPLY    # our ID reply names trio-mailproxy and its version
    return (line.replace("{client_port}", str(CLIENT_PORT))
            .replace("{proxy_port}", str(PROXY_PORT)).encode("utf-8"))


class Lines:
    """Output bytes, split into CRLF lines as the transcripts record them."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.buf += data

    def pop(self) -> bytes:
        i = self.buf.find(b"\r\n")
        assert i >= 0, f"expected another line, have {bytes(self.buf)!r}"
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line


class Replay:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.fwd = ForwardedFields("{session}", "{client_ip}", CLIENT_PORT, "{proxy_ip}",
                                   PROXY_PORT)
        self.server = imap.ServerConnection(greeting="{greeting}", disable_plaintext_auth=False,
                                            mechanisms=("PLAIN", "LOGIN"))
        self.to_client = Lines()
        self.to_client.add(self.server.data_to_send())
        self.backend_items = list(sc.backend)

    def run(self) -> None:
        for kind, line in self.sc.client:
            proxying = self.server.state is imap.ServerState.PROXYING
            if kind == "out":
                if proxying and not self.to_client.buf:
                    break                     # the relay from here on
                assert self.to_client.pop() == expected(line)
            elif not proxying:
                assert not self.to_client.buf, bytes(self.to_client.buf)
                self.server.receive_data(line.encode("utf-8") + b"\r\n")
                self.pump_server()
        assert not self.to_client.buf, bytes(self.to_client.buf)

    def pump_server(self) -> None:
        srv = self.server
        while srv.state is not imap.ServerState.PROXYING:
            ev = srv.next_event()
            self.to_client.add(srv.data_to_send())
            if ev is NEED_DATA or isinstance(ev, ConnectionEnded):
                return
            if isinstance(ev, ClientIdentified):
                if self.sc.trusted and ev.first:
                    self.fwd = from_imap_id(ev.pairs, self.fwd)
            elif isinstance(ev, AuthRequested):
                self.to_client.add(srv.send(self.login_backend(ev.credentials)))

    def backend_login(self, creds: Credentials) -> BackendLogin:
        f = self.sc.passdb
        forward = [(k[len("forward_"):], v) for k, v in f.items() if k.startswith("forward_")]
        return BackendLogin(
            destuser=f.get("destuser", creds.user),
            password=Secret(f["pass"]) if "pass" in f else creds.password,
            master_user=f.get("master"),
            mechanism=f.get("proxy_mech"),
            starttls="starttls" in f,
            ssl="ssl" in f,
            nopipelining="proxy_nopipelining" in f,
            not_trusted="proxy_not_trusted" in f,
            forwarded=self.fwd.with_forward(forward),
            client_sent_capability=self.server.client_sent_capability,
        )

    def login_backend(self, creds: Credentials) -> Event:
        login = self.backend_login(creds)
        attempts: list[list[tuple[str, str]]] = []
        for item in self.backend_items:
            if item[0] == "connect":
                attempts.append([])
            else:
                attempts[-1].append(item)
        if not attempts:   # nothing listening
            return AuthFailed(FailureKind.UNAVAILABLE)
        for n, items in enumerate(attempts):
            result = self.attempt(login, items)
            if isinstance(result, BackendLoggedIn):
                return AuthSucceeded(result)
            if result.kind not in RECONNECT_KINDS or n == len(attempts) - 1:
                return AuthFailed(FailureKind.BACKEND, backend=result)
        raise AssertionError("unreachable")

    def attempt(self, login: BackendLogin, items: list[tuple[str, str]]) -> Event:
        conn = imap.ClientConnection(login)
        out = Lines()
        result: Event | None = None

        def pump() -> Event | None:
            while True:
                ev = conn.next_event()
                out.add(conn.data_to_send())
                if ev is NEED_DATA or isinstance(ev, StartTLSRequired):
                    return None
                if isinstance(ev, UntaggedRelay):
                    self.to_client.add(self.server.send(ev))
                    continue
                return ev

        result = pump()
        got_data = False
        for kind, line in items:
            if result is not None:
                assert kind not in ("out",) or isinstance(result, BackendLoggedIn)
                break
            if kind == "in":
                got_data = True
                conn.receive_data(line.encode("utf-8") + b"\r\n")
                result = pump()
            elif kind == "eof":
                conn.receive_data(b"")
                result = pump()
            elif kind == "tls" and conn.state is imap.ClientState.TLS_HANDSHAKE:
                conn.tls_started()
                out.add(conn.data_to_send())
            elif kind == "out":
                assert out.pop() == expected(line)
        if result is None:
            assert not got_data
            return BackendLoginFailed(BackendFailure.CONNECT, "TLS handshake failed")
        if isinstance(result, BackendLoginFailed):
            assert not out.buf, bytes(out.buf)    # nothing more went out
        return result


SCENARIOS = sorted(SPEC.glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert len(SCENARIOS) >= 20


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_replay(path: Path) -> None:
    Replay(parse(path)).run()
