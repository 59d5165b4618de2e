"""Round trips through our encoders and parsers (hypothesis)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailproxy.protocols import (
    NEED_DATA,
    AuthRequested,
    BackendFailure,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    ClientIdentified,
    Event,
    ForwardedFields,
    LocalProtocolError,
    Secret,
    StartTLSRequired,
    UntaggedRelay,
    imap,
    sasl,
)
from mailproxy.protocols._imapquote import imap_string
from mailproxy.protocols.forwarding import dovecot_tab_escape, dovecot_tab_unescape, from_imap_id

# PROTOCOL_PROPERTY_EXAMPLES raises the example count for a longer local run.
SETTINGS = settings(max_examples=int(os.environ.get("PROTOCOL_PROPERTY_EXAMPLES", "300")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Any text without NUL (CR, LF, quotes, backslashes, 8-bit, braces all welcome).
TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=40)
TRICKY = st.sampled_from(['"', "\\", "\r\n", "\r", "\n", "{5}", "NIL", ")", "(", " ", "\u00e9",
                          "* OK injected", "a LOGOUT"])
VALUE = st.one_of(TEXT, st.lists(st.one_of(TRICKY, TEXT), max_size=6).map("".join))


def server_events(data: bytes, **kw: object) -> tuple[list[Event], imap.ServerConnection]:
    kw.setdefault("disable_plaintext_auth", False)
    conn = imap.ServerConnection(**kw)  # type: ignore[arg-type]
    conn.receive_data(data)
    events = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return events, conn
        events.append(ev)
        if isinstance(ev, AuthRequested):
            return events, conn


@SETTINGS
@given(VALUE.filter(bool), VALUE)
def test_astring_and_literal_round_trip(user: str, password: str) -> None:
    u, _ = imap_string(user)
    p, _ = imap_string(password)
    events, conn = server_events(b"a LOGIN " + u + b" " + p + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], AuthRequested)
    c = events[0].credentials
    assert (c.authcid, c.password) == (user, Secret(password))
    assert conn.trailing_data() == b""   # nothing left over: no injected command


@SETTINGS
@given(st.lists(st.tuples(TEXT.filter(lambda s: not any(c in s for c in "\r\n")),
                          st.one_of(st.none(), VALUE)),
                max_size=6),
       st.integers(min_value=2, max_value=10))
def test_id_forwarding_round_trip(forward: list[tuple[str, str | None]], ttl: int) -> None:
    # Keys must fit Dovecot's 30-byte ID key limit ("x-forward-" + name).
    assume(all(len(("x-forward-" + k).encode("utf-8", "surrogateescape")) <= 30 for k, _ in forward))
    fwd = ForwardedFields("sess-1", "192.0.2.1", 1234, "198.51.100.2", 143, ttl, tuple(forward))
    events, conn = server_events(b"a ID " + fwd.imap_id_arguments() + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], ClientIdentified)
    assert conn.trailing_data() == b""
    got = from_imap_id(events[0].pairs, ForwardedFields("x", "10.0.0.1", 1, "10.0.0.2", 2))
    # NIL values are not applied (Dovecot ignores NIL for its own keys)
    expected = tuple((k, v) for k, v in forward if v is not None)
    assert got == ForwardedFields("sess-1", "192.0.2.1", 1234, "198.51.100.2", 143, ttl - 1,
                                  expected)


@SETTINGS
@given(TEXT, TEXT)
def test_nul_is_refused_everywhere(a: str, b: str) -> None:
    with pytest.raises(LocalProtocolError):
        ForwardedFields("s", "1.2.3.4", 1, "1.2.3.4", 1, forward=(("k", a + "\0" + b),))
    with pytest.raises(ValueError):
        imap_string(a + "\0" + b)


@SETTINGS
@given(TEXT)
def test_tab_escape_round_trip(value: str) -> None:
    escaped = dovecot_tab_escape(value + "\0")
    assert not any(c in escaped for c in "\t\r\n\0")
    assert dovecot_tab_unescape(escaped) == value + "\0"


@SETTINGS
@given(TEXT.filter(bool), TEXT.filter(bool), VALUE)
def test_sasl_plain_round_trip(authzid: str, authcid: str, password: str) -> None:
    c = sasl.decode_plain(sasl.plain_response(authzid, authcid, password))
    assert (c.authcid, c.password) == (authcid, Secret(password))
    assert c.authzid == (None if authzid == authcid else authzid)


@SETTINGS
@given(st.binary(max_size=200))
def test_base64_round_trip(data: bytes) -> None:
    assert sasl.decode_base64(sasl.encode_base64(data)) == data


@SETTINGS
@given(VALUE.filter(bool), VALUE, st.sampled_from([None, "PLAIN", "LOGIN"]),
       st.booleans(), st.booleans())
def test_credentials_survive_both_roles(user: str, password: str, mech: str | None,
                                        sasl_ir: bool, nopipelining: bool) -> None:
    assume("\r" not in user and "\n" not in user)
    login = BackendLogin(user, Secret(password), mechanism=mech, nopipelining=nopipelining,
                         forwarded=ForwardedFields("s", "1.2.3.4", 1, "5.6.7.8", 2))
    caps = "IMAP4rev1 ID LITERAL+" + (" SASL-IR" if sasl_ir else "")
    server = imap.ServerConnection(disable_plaintext_auth=False, capability_override=caps)
    client = imap.ClientConnection(login)
    creds = None
    to_client = server.data_to_send()
    for _ in range(50):
        client.receive_data(to_client)
        to_client = b""
        ev = client.next_event()
        if isinstance(ev, (BackendLoggedIn, BackendLoginFailed)):
            break
        server.receive_data(client.data_to_send())
        while (sev := server.next_event()) is not NEED_DATA:
            if isinstance(sev, AuthRequested):
                creds = sev.credentials
                from mailproxy.protocols import AuthSucceeded
                to_client += server.data_to_send()
                to_client += server.send(AuthSucceeded(BackendLoggedIn(b"L OK hi", None)))
                break
        to_client += server.data_to_send()
    assert creds is not None
    assert creds.password == Secret(password)
    assert creds.user == user


@SETTINGS
@given(st.binary(max_size=800), st.booleans(), st.booleans())
def test_client_role_arbitrary_bytes(data: bytes, starttls: bool, nopipelining: bool) -> None:
    login = BackendLogin("alice", Secret("pw"), starttls=starttls, nopipelining=nopipelining,
                         forwarded=ForwardedFields("s", "1.2.3.4", 1, "5.6.7.8", 2))
    conn = imap.ClientConnection(login)
    conn.receive_data(data)
    conn.receive_data(b"")
    for _ in range(1000):
        ev = conn.next_event()
        assert len(conn._reader) <= 4096
        if ev is NEED_DATA:
            raise AssertionError("NEED_DATA after EOF")
        assert isinstance(ev, (UntaggedRelay, StartTLSRequired, BackendLoggedIn,
                               BackendLoginFailed))
        if isinstance(ev, StartTLSRequired):
            conn.tls_started()
            conn.receive_data(b"")
        if isinstance(ev, (BackendLoggedIn, BackendLoginFailed)):
            if isinstance(ev, BackendLoginFailed):
                assert isinstance(ev.kind, BackendFailure)
            return
    raise AssertionError("no end")
