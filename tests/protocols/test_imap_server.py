"""imap.ServerConnection: the client-facing side, byte for byte as Dovecot's imap-login
(wire reference §1.3-§1.5). Tables are (input bytes, expected output bytes)."""

from __future__ import annotations

import time

import pytest

from imap_helpers import bytewise, fail_all, protocol_error, run_server, server, succeed
from mailproxy import __version__
from mailproxy.protocols import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    BackendFailure,
    BackendLoggedIn,
    BackendLoginFailed,
    Bye,
    ClientIdentified,
    ConnectionEnded,
    Credentials,
    FailureKind,
    LocalProtocolError,
    Referral,
    RemoteProtocolError,
    Secret,
    StartTLSRequested,
    UntaggedRelay,
    imap,
)

BANNER = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+"
ID_REPLY = b'* ID ("name" "trio-mailproxy" "version" "' + __version__.encode() + b'")\r\n'
BAD = b" BAD Error in IMAP command received by server.\r\n"
ALERT = (b"* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your "
         b"client did it anyway. If anyone was listening, the password was exposed.\r\n")


# ------------------------------------------------------------------------- greeting

@pytest.mark.parametrize("kw, caps", [
    # insecure + disable_plaintext_auth: LOGINDISABLED, no AUTH= (wire §1.4)
    (dict(), BANNER + " LOGINDISABLED"),
    (dict(tls_available=True), BANNER + " STARTTLS LOGINDISABLED"),
    (dict(secured=True), BANNER + " AUTH=PLAIN AUTH=LOGIN"),
    (dict(tls_available=True, tls_active=True), BANNER + " AUTH=PLAIN AUTH=LOGIN"),
    (dict(disable_plaintext_auth=False), BANNER + " AUTH=PLAIN AUTH=LOGIN"),
    (dict(secured=True, mechanisms=["LOGIN"]), BANNER + " LOGINDISABLED AUTH=LOGIN"),
    (dict(secured=True, mechanisms=["plain", "xoauth2", "OAUTHBEARER"]),
     BANNER + " AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER"),
    (dict(secured=True, capability_override="+XAPPLEPUSHSERVICE X-FOO"),
     "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE XAPPLEPUSHSERVICE X-FOO LITERAL+"
     " AUTH=PLAIN AUTH=LOGIN"),
    (dict(capability_override="IMAP4rev1 ID", tls_available=True),
     "IMAP4rev1 ID STARTTLS LOGINDISABLED"),
])
def test_greeting(kw: dict[str, object], caps: str) -> None:
    conn = imap.ServerConnection(greeting="Dovecot ready.", **kw)  # type: ignore[arg-type]
    assert conn.data_to_send() == b"* OK [CAPABILITY " + caps.encode() + b"] Dovecot ready.\r\n"
    assert conn.capability == caps
    assert conn.data_to_send() == b""
    assert conn.state is imap.ServerState.NOT_AUTHENTICATED


def test_default_greeting_text() -> None:
    assert imap.ServerConnection().data_to_send().endswith(b"] trio-mailproxy ready.\r\n")


def test_received_data_may_be_a_bytearray() -> None:
    # what trio's memory streams hand over; the compiled build checks argument types
    events, out = run_server(server(), [bytearray(b"a CAPABILITY\r\n"), bytearray(b"b LOGIN")])
    assert out.startswith(b"* CAPABILITY IMAP4rev1 ")
    assert out.endswith(b"a OK Pre-login capabilities listed, post-login capabilities "
                        b"have more.\r\n")
    assert events == []


def test_constructor_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        imap.ServerConnection(greeting="a\r\nb")
    with pytest.raises(ValueError):
        imap.ServerConnection(mechanisms=["CRAM-MD5"])


# ------------------------------------------------------------------ simple commands

SIMPLE = [
    (b"a CAPABILITY\r\n",
     b"* CAPABILITY " + BANNER.encode() + b" AUTH=PLAIN AUTH=LOGIN\r\n"
     b"a OK Pre-login capabilities listed, post-login capabilities have more.\r\n"),
    (b"a capability\r\n",
     b"* CAPABILITY " + BANNER.encode() + b" AUTH=PLAIN AUTH=LOGIN\r\n"
     b"a OK Pre-login capabilities listed, post-login capabilities have more.\r\n"),
    (b"x1 NOOP\r\n", b"x1 OK NOOP completed.\r\n"),
    (b"x1 NOOP\n", b"x1 OK NOOP completed.\r\n"),          # LF-only lines are accepted
    (b"x1 noop with args (x y) \"q\"\r\n", b"x1 OK NOOP completed.\r\n"),
    (b"e ENABLE CONDSTORE\r\n", b"* ENABLED\r\ne OK ENABLE ignored in non-authenticated state.\r\n"),
    (b"a STARTTLS\r\n", b"a BAD TLS support isn't enabled.\r\n"),
    # ID (imap-login-cmd-id.c)
    (b"i ID NIL\r\n", ID_REPLY + b"i OK ID completed.\r\n"),
    (b"i ID\r\n", ID_REPLY + b"i OK ID completed.\r\n"),
    (b'i ID ("name" "x")\r\n', ID_REPLY + b"i OK ID completed.\r\n"),
    (b'i ID ()\r\n', ID_REPLY + b"i OK ID completed.\r\n"),
    (b'i ID (name "x")\r\n', b"i BAD Invalid ID parameters\r\n"),       # atom key
    (b'i ID ("name" x)\r\n', b"i BAD Invalid ID parameters\r\n"),       # atom value
    (b'i ID ("name" ("x"))\r\n', b"i BAD Invalid ID parameters\r\n"),
    (b'i ID "name"\r\n', b"i BAD Invalid ID parameters\r\n"),
    (b'i ID ("' + b"k" * 31 + b'" "v")\r\n', b"i BAD Invalid ID parameters\r\n"),
    (b'i ID ("name" "x"\r\n', b"i BAD Missing ')'\r\n"),
    (b'i ID )\r\n', b"i BAD Unexpected ')'\r\n"),
    # bad commands (first and second one: BAD, counted)
    (b"a FOO\r\n", b"a" + BAD),
    (b"\r\n", b"*" + BAD),                                   # empty line: no tag
    (b"a\r\n", b"a" + BAD),                                  # tag without command
    (b"a(b NOOP\r\n", b"*" + BAD),                          # invalid tag never echoed
    (b"+a NOOP\r\n", b"*" + BAD),
    (b"a  NOOP\r\n", b"a" + BAD),                            # two spaces: empty command
    (b"a NO{OP\r\n", b"a" + BAD),
    (b"a LOGIN onlyuser\r\n", b"a" + BAD),
    (b"a LOGIN u p extra\r\n", b"a" + BAD),
    (b"a LOGIN (u) p\r\n", b"a" + BAD),
    (b"LOGIN user pass\r\n",
     b"LOGIN BAD First parameter in line is IMAP's command tag, not the command name. "
     b"Add that before the command, like: a login user pass\r\n"),
    # syntax errors: "<tag> BAD <parser message>" (not counted)
    (b'a LOGIN "user pass\r\n', b"a BAD Missing '\"'\r\n"),
    (b"a NOOP )\r\n", b"a BAD Unexpected ')'\r\n"),
    (b"a NOOP (x\r\n", b"a BAD Missing ')'\r\n"),
    (b"a NOOP x\x01y\r\n", b"a BAD Invalid characters in atom\r\n"),
    (b"a NOOP \xc3\xa9\r\n", b"a BAD 8bit data in atom\r\n"),
    (b"a NOOP ~{3}\r\n", b"a BAD literal8 not allowed here\r\n"),
    (b"a NOOP {3x}\r\n", b"a BAD Invalid literal size\r\n"),
    (b"a NOOP {3+x}\r\n", b"a BAD Expecting '}' after '+'\r\n"),
    (b"a NOOP {3} x\r\n", b"a BAD Missing LF after literal size\r\n"),
    (b"a NOOP x\ry\r\n", b"a BAD CR sent without LF\r\n"),
    (b'a NOOP "a\0b"\r\n', b"a BAD NULs not allowed in strings\r\n"),
]


@pytest.mark.parametrize("data, expected", SIMPLE)
def test_simple_commands(data: bytes, expected: bytes) -> None:
    events, out = run_server(server(), [data])
    assert out == expected
    assert all(isinstance(e, ClientIdentified) for e in events)
    # the same bytes one at a time give the same result
    events2, out2 = run_server(server(), bytewise(data))
    assert (events2, out2) == (events, out)


def test_logout() -> None:
    conn = server()
    events, out = run_server(conn, [b"a LOGOUT\r\nb NOOP\r\n"])
    assert out == b"* BYE Logging out\r\na OK Logout completed.\r\n"
    assert events == [ConnectionEnded("Aborted login by logging out")]
    assert conn.state is imap.ServerState.LOGOUT
    assert conn.next_event() == ConnectionEnded("Aborted login by logging out")


def test_third_bad_command_ends_the_session() -> None:
    conn = server()
    events, out = run_server(conn, [b"a FOO\r\nb NOOP\r\nc BAR\r\nd BAZ\r\ne NOOP\r\n"])
    assert out == (b"a" + BAD + b"b OK NOOP completed.\r\nc" + BAD
                   + b"* BYE Too many invalid IMAP commands.\r\n")
    assert events == [ConnectionEnded("Too many invalid commands")]


def test_syntax_errors_and_login_hint_are_not_counted() -> None:
    conn = server()
    events, out = run_server(conn, [b"a NOOP )\r\n" * 5 + b"LOGIN a b\r\n" * 3 + b"x NOOP\r\n"])
    assert out.endswith(b"x OK NOOP completed.\r\n")
    assert events == []


def test_id_event_pairs_and_first_flag() -> None:
    conn = server()
    events, out = run_server(conn, [
        b'a ID ("name" "x" "X-Originating-IP" "192.0.2.7" "v" NIL "odd")\r\n',
        b'b ID ("k" {3}\r\n', b'a\xffb)\r\n'])
    assert events == [
        ClientIdentified((("name", "x"), ("X-Originating-IP", "192.0.2.7"), ("v", None)), True),
        ClientIdentified((("k", "a\udcffb"),), False),
    ]
    assert out == (ID_REPLY + b"a OK ID completed.\r\n" + b"+ OK\r\n"
                   + ID_REPLY + b"b OK ID completed.\r\n")


def test_id_ignores_what_follows_the_list() -> None:
    events, out = run_server(server(), [b'a ID ("k" "v") "rest\r\n'])
    assert events == [ClientIdentified((("k", "v"),))]
    assert out == ID_REPLY + b"a OK ID completed.\r\n"


# ---------------------------------------------------------------------------- LOGIN

def creds_of(events: list[object]) -> Credentials:
    (ev,) = [e for e in events if isinstance(e, AuthRequested)]
    return ev.credentials


@pytest.mark.parametrize("chunks, user, password, continuations", [
    ([b"a LOGIN alice secret\r\n"], "alice", "secret", 0),
    ([b'a LOGIN "alice" "p a\\"s\\\\s"\r\n'], "alice", 'p a"s\\s', 0),
    ([b"a LOGIN {5}\r\n", b"alice {6}\r\n", b"secret\r\n"], "alice", "secret", 2),
    ([b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"], "alice", "secret", 0),
    ([b"a LOGIN alice {0}\r\n\r\n"], "alice", "", 1),
    ([b"a login NIL nil\r\n"], "NIL", "nil", 0),               # astring: NIL is "NIL"
    ([b"a LOGIN alice {4+}\r\n\xc3\xa9\r\n\r\n"], "alice", "\u00e9\r\n", 0),
    ([b"a LOGIN {2+}\r\n\xff\xfe x\r\n"], "\udcff\udcfe", "x", 0),
])
def test_login_forms(chunks: list[bytes], user: str, password: str, continuations: int) -> None:
    conn = server()
    events, out = run_server(conn, chunks)
    assert out == b"+ OK\r\n" * continuations + b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    c = creds_of(events)
    assert c == Credentials("PLAIN", user, None, Secret(password), None, True)
    # byte by byte
    events2, out2 = run_server(server(), bytewise(b"".join(chunks)))
    assert (events2, out2) == (events, out)


def test_login_plaintext_disabled() -> None:
    conn = server(disable_plaintext_auth=True)
    events, out = run_server(conn, [b"a LOGIN alice secret\r\n"])
    assert events == []
    assert out == ALERT + (b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on "
                           b"non-secure (SSL/TLS) connections.\r\n")
    assert conn.state is imap.ServerState.NOT_AUTHENTICATED


def test_login_allowed_when_secured() -> None:
    events, out = run_server(server(disable_plaintext_auth=True, secured=True),
                             [b"a LOGIN alice secret\r\n"])
    assert creds_of(events).authcid == "alice"


def test_login_without_plain_mechanism() -> None:
    events, out = run_server(server(mechanisms=["LOGIN"]), [b"a LOGIN alice secret\r\n"])
    assert out == b"a NO [ALERT] Unsupported authentication mechanism.\r\n"
    assert events == []


def test_login_empty_user_fails_at_once() -> None:
    events, out = run_server(server(), [b'a LOGIN "" secret\r\n'])
    assert out == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert events == []


# --------------------------------------------------------------------- AUTHENTICATE

def b64(data: bytes) -> bytes:
    import base64

    return base64.b64encode(data)


PLAIN = b64(b"\0alice\0secret")


def nologin(ev: AuthRequested) -> AuthFailed:
    return AuthFailed(FailureKind.NOLOGIN)


@pytest.mark.parametrize("chunks, creds, out", [
    ([b"a AUTHENTICATE PLAIN " + PLAIN + b"\r\n"],
     Credentials("PLAIN", "alice", None, Secret("secret")), b""),
    ([b"a authenticate plain " + PLAIN + b"\r\n"],
     Credentials("PLAIN", "alice", None, Secret("secret")), b""),
    ([b"a AUTHENTICATE PLAIN\r\n", PLAIN + b"\r\n"],
     Credentials("PLAIN", "alice", None, Secret("secret")), b"+ \r\n"),
    ([b"a AUTHENTICATE PLAIN " + b64(b"admin\0master\0mpw") + b"\r\n"],
     Credentials("PLAIN", "master", "admin", Secret("mpw")), b""),
    ([b"a AUTHENTICATE PLAIN " + b64(b"alice\0alice\0pw") + b"\r\n"],
     Credentials("PLAIN", "alice", None, Secret("pw")), b""),
    ([b"a AUTHENTICATE LOGIN\r\n", b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"],
     Credentials("LOGIN", "alice", None, Secret("secret")),
     b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"),
    ([b"a AUTHENTICATE LOGIN =\r\n", b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"],
     Credentials("LOGIN", "alice", None, Secret("secret")),
     b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"),
    ([b"a AUTHENTICATE LOGIN " + b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"],
     Credentials("LOGIN", "alice", None, Secret("secret")), b"+ UGFzc3dvcmQ6\r\n"),
    ([b"a AUTHENTICATE XOAUTH2 " + b64(b"user=alice\x01auth=Bearer tok\x01\x01") + b"\r\n"],
     Credentials("XOAUTH2", "alice", None, None, Secret("tok")), b""),
    ([b"a AUTHENTICATE OAUTHBEARER\r\n",
      b64(b"n,a=al=2Cice,\x01host=x\x01auth=Bearer tok\x01\x01") + b"\r\n"],
     Credentials("OAUTHBEARER", "al,ice", None, None, Secret("tok")), b"+ \r\n"),
    # whitespace inside base64 is ignored, as by Dovecot's decoder
    ([b"a AUTHENTICATE PLAIN AGFsaWNl AHNlY3JldA==\r\n"],
     Credentials("PLAIN", "alice", None, Secret("secret")), b""),
])
def test_authenticate(chunks: list[bytes], creds: Credentials, out: bytes) -> None:
    mechs = ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"]
    events, got = run_server(server(mechanisms=mechs), chunks, nologin)
    assert creds_of(events) == creds
    assert got == out + b"a NO [CONTACTADMIN] Login disabled for this user\r\n"
    events2, got2 = run_server(server(mechanisms=mechs), bytewise(b"".join(chunks)), nologin)
    assert (events2, got2) == (events, got)


@pytest.mark.parametrize("chunks, out", [
    ([b"a AUTHENTICATE PLAIN\r\n", b"*\r\n"], b"+ \r\na BAD Authentication aborted by client.\r\n"),
    ([b"a AUTHENTICATE LOGIN\r\n", b"*\r\n"],
     b"+ VXNlcm5hbWU6\r\na BAD Authentication aborted by client.\r\n"),
    ([b"a AUTHENTICATE PLAIN !!!!\r\n"], b"a BAD Invalid base64 data in initial response\r\n"),
    ([b"a AUTHENTICATE PLAIN YQ\r\n"], b"a BAD Invalid base64 data in initial response\r\n"),
    ([b"a AUTHENTICATE PLAIN\r\n", b"%%%\r\n"],
     b"+ \r\na BAD Invalid base64 data in continued response\r\n"),
    ([b"a AUTHENTICATE PLAIN =\r\n"], b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
    ([b"a AUTHENTICATE PLAIN " + b64(b"alice\0pw") + b"\r\n"],
     b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
    ([b"a AUTHENTICATE PLAIN " + b64(b"\0\0pw") + b"\r\n"],
     b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
    ([b"a AUTHENTICATE CRAM-MD5\r\n"], b"a NO [ALERT] Unsupported authentication mechanism.\r\n"),
    ([b"a AUTHENTICATE XOAUTH2 =\r\n"], b"a NO [ALERT] Unsupported authentication mechanism.\r\n"),
    ([b"a AUTHENTICATE\r\n"], b"a" + BAD),
    ([b"a AUTHENTICATE  PLAIN\r\n"], b"a" + BAD),
])
def test_authenticate_failures(chunks: list[bytes], out: bytes) -> None:
    conn = server()
    events, got = run_server(conn, chunks)
    assert events == []
    assert got == out
    assert conn.state is imap.ServerState.NOT_AUTHENTICATED
    # the connection goes on
    assert run_server(conn, [b"z NOOP\r\n"])[1] == b"z OK NOOP completed.\r\n"


def test_authenticate_plaintext_disabled() -> None:
    _, out = run_server(server(disable_plaintext_auth=True), [b"a AUTHENTICATE PLAIN\r\n"])
    assert out == b"a NO [PRIVACYREQUIRED] Plaintext authentication disabled.\r\n"


def test_authenticate_checks_mechanism_before_plaintext() -> None:
    _, out = run_server(server(disable_plaintext_auth=True), [b"a AUTHENTICATE FOO\r\n"])
    assert out == b"a NO [ALERT] Unsupported authentication mechanism.\r\n"


def test_authenticate_line_is_raw_and_long() -> None:
    # Dovecot reads the SASL-IR outside the 1026-byte input buffer, up to 8192 bytes.
    token = b"t" * 5000
    ir = b64(b"user=alice\x01auth=Bearer " + token + b"\x01\x01")
    events, out = run_server(server(mechanisms=["XOAUTH2"]),
                             [b"a AUTHENTICATE XOAUTH2 " + ir + b"\r\n"])
    assert creds_of(events).token == Secret(token.decode())
    # a response line too: up to max_literal_size
    events, out = run_server(server(mechanisms=["XOAUTH2"]),
                             [b"a AUTHENTICATE XOAUTH2\r\n", ir + b"\r\n"])
    assert creds_of(events).token == Secret(token.decode())
    # "{5}" at the end of an AUTHENTICATE line is not a literal
    _, out = run_server(server(), [b"a AUTHENTICATE PLAIN {5}\r\n"])
    assert out == b"a BAD Invalid base64 data in initial response\r\n"


def test_authenticate_response_too_large_closes_silently() -> None:
    conn = server(mechanisms=["XOAUTH2"])
    e = protocol_error(conn, b"a AUTHENTICATE XOAUTH2 " + b"A" * 9000 + b"\r\n")
    assert e.reply == b"" and e.close
    assert conn.state is imap.ServerState.ERROR
    conn = server()
    conn.receive_data(b"a AUTHENTICATE PLAIN\r\n")
    assert conn.next_event() is NEED_DATA
    e = protocol_error(conn, b"A" * 9000)
    assert e.reply == b""


# --------------------------------------------------------------------------- limits

def test_line_limit_is_dovecots_1026_byte_buffer() -> None:
    ok = b"a NOOP " + b"x" * (1024 - 7)
    assert len(ok) == 1024
    _, out = run_server(server(), [ok + b"\r\n"])
    assert out == b"a OK NOOP completed.\r\n"
    e = protocol_error(server(), ok + b"x\r\n")
    assert e.reply == b"* BYE Input buffer full, aborting\r\n"
    # live: 1020 accepted, 1030 refused, also without any line end yet
    e = protocol_error(server(), b"a NOOP " + b"x" * 1030)
    assert e.reply == b"* BYE Input buffer full, aborting\r\n" and e.close
    conn = server()
    conn.receive_data(b"a NOOP " + b"x" * 1019)
    assert conn.next_event() is NEED_DATA


def test_literal_limit() -> None:
    e = protocol_error(server(), b"a LOGIN alice {8193}\r\n")
    assert e.reply == b"* BYE Literal size too large\r\n"
    e = protocol_error(server(), b"a LOGIN alice {99999999999999999999999}\r\n")
    assert e.reply == b"* BYE Literal size too large\r\n"
    # the command as a whole (literals included) may reach max_literal_size
    events, _ = run_server(server(), [b"a LOGIN alice {8000+}\r\n" + b"p" * 8000 + b"\r\n"])
    assert creds_of(events).password == Secret("p" * 8000)
    e = protocol_error(server(max_literal_size=100), b"a LOGIN {50+}\r\n" + b"u" * 50
                       + b" {40}\r\n")
    assert e.reply == b"* BYE Literal size too large\r\n"


def test_error_state_sticks() -> None:
    conn = server()
    protocol_error(conn, b"a LOGIN alice {9000}\r\n")
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert exc.value.reply == b""


# -------------------------------------------------------------------------- STARTTLS

def test_starttls_discards_pipelined_bytes() -> None:
    conn = server(tls_available=True, disable_plaintext_auth=True)
    conn.receive_data(b"a STARTTLS\r\nb LOGIN injected command\r\n")
    assert conn.next_event() == StartTLSRequested()
    assert conn.data_to_send() == b"a OK Begin TLS negotiation now.\r\n"
    assert conn.state is imap.ServerState.STARTTLS
    conn.receive_data(b"c LOGIN more plaintext\r\n")     # still before the handshake
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.tls_started()
    assert conn.trailing_data() == b""
    assert conn.tls_active and conn.secured
    conn.receive_data(b"d CAPABILITY\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == (b"* CAPABILITY " + BANNER.encode() + b" AUTH=PLAIN AUTH=LOGIN\r\n"
                                   b"d OK Pre-login capabilities listed, post-login "
                                   b"capabilities have more.\r\n")
    # CAPABILITY after STARTTLS does not mark the client as ignoring the resp-code
    assert conn.client_sent_capability is False
    _, out = run_server(conn, [b"e STARTTLS\r\n"])
    assert out == b"e BAD TLS is already active.\r\n"
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


def test_capability_before_starttls_is_remembered() -> None:
    conn = server(tls_available=True)
    run_server(conn, [b"a CAPABILITY\r\n", b"b STARTTLS\r\n"])
    assert conn.client_sent_capability is True


# ------------------------------------------------------------------ driver replies

def logged_in(conn: imap.ServerConnection, login: bytes = b"a LOGIN alice secret\r\n") -> None:
    conn.receive_data(login)
    ev = conn.next_event()
    assert isinstance(ev, AuthRequested)
    assert conn.state is imap.ServerState.LOGGING_IN


CAPS = ("IMAP4rev1", "SASL-IR", "ID", "LITERAL+", "AUTH=PLAIN")
CAPS_B = b" ".join(c.encode() for c in CAPS)


@pytest.mark.parametrize("client_cap, line, caps, expected", [
    # tagged capability code: relayed unchanged
    (False, b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in", ("IMAP4rev1", "IDLE"),
     b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    # none: the last known backend caps are inserted (live: b OK [CAPABILITY ...] Logged in)
    (False, b"L OK Logged in", CAPS, b"a OK [CAPABILITY " + CAPS_B + b"] Logged in\r\n"),
    # another leading resp-code is replaced
    (False, b"L OK [ALERT] hi there", CAPS, b"a OK [CAPABILITY " + CAPS_B + b"] hi there\r\n"),
    (False, b"L OK Logged in", None, b"a OK Logged in\r\n"),
    # the client sent CAPABILITY: untagged caps first, tagged OK unchanged
    (True, b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in", ("IMAP4rev1", "IDLE"),
     b"* CAPABILITY IMAP4rev1 IDLE\r\na OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    (True, b"L OK Logged in", CAPS, b"* CAPABILITY " + CAPS_B + b"\r\na OK Logged in\r\n"),
    (True, b"L OK Logged in", None, b"a OK Logged in\r\n"),
])
def test_auth_succeeded(client_cap: bool, line: bytes, caps: tuple[str, ...] | None,
                        expected: bytes) -> None:
    conn = server()
    if client_cap:
        run_server(conn, [b"x CAPABILITY\r\n"])
    logged_in(conn)
    assert conn.send(AuthSucceeded(BackendLoggedIn(line, caps))) == expected
    assert conn.state is imap.ServerState.PROXYING
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_trailing_data_keeps_pipelined_commands() -> None:
    conn = server()
    conn.receive_data(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1 (BODY[])\r\n")
    assert isinstance(conn.next_event(), AuthRequested)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.receive_data(b"d IDLE\r\n")
    conn.send(AuthSucceeded(BackendLoggedIn(b"L OK Logged in", None)))
    assert conn.trailing_data() == b"b SELECT INBOX\r\nc FETCH 1 (BODY[])\r\nd IDLE\r\n"
    assert conn.trailing_data() == conn.trailing_data()  # not consumed


def test_failure_then_pipelined_retry() -> None:
    conn = server()
    conn.receive_data(b"a LOGIN alice wrong\r\nb LOGIN alice right\r\n")
    assert isinstance(conn.next_event(), AuthRequested)
    assert conn.send(AuthFailed(FailureKind.AUTH_FAILED)) == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    ev = conn.next_event()
    assert isinstance(ev, AuthRequested) and ev.credentials.password == Secret("right")


def backend_failure(kind: BackendFailure, line: bytes | None, reason: str = "r") -> AuthFailed:
    return AuthFailed(FailureKind.BACKEND, backend=BackendLoginFailed(kind, reason, line))


@pytest.mark.parametrize("event, expected", [
    (AuthFailed(FailureKind.AUTH_FAILED), b"a NO [AUTHENTICATIONFAILED] Authentication failed."),
    (AuthFailed(FailureKind.AUTH_FAILED, "Go away"), b"a NO [ALERT] Go away"),
    (AuthFailed(FailureKind.AUTH_FAILED, "[EXPIRED] Password expired"),
     b"a NO [EXPIRED] Password expired"),
    (AuthFailed(FailureKind.TEMPFAIL, "Maximum number of connections from user+IP exceeded "
                "(mail_max_userip_connections=10)"),
     b"a NO [UNAVAILABLE] Maximum number of connections from user+IP exceeded "
     b"(mail_max_userip_connections=10)"),
    (AuthFailed(FailureKind.NOLOGIN), b"a NO [CONTACTADMIN] Login disabled for this user"),
    (AuthFailed(FailureKind.NOLOGIN, "Account locked"), b"a NO [CONTACTADMIN] Account locked"),
    (AuthFailed(FailureKind.REFERRAL, referral=Referral("ref", "imap.example.com", 1143)),
     b"a NO [REFERRAL imap://ref;AUTH=PLAIN@imap.example.com:1143/] Try this server instead."),
    (AuthFailed(FailureKind.REFERRAL, referral=Referral("a@b.c;d", "h", 143, "Moved")),
     b"a NO [REFERRAL imap://a%40b.c%3bd;AUTH=PLAIN@h/] Moved"),
    (AuthFailed(FailureKind.REFERRAL, referral=Referral("u", "2001:db8::1", 993, None, "LOGIN")),
     b"a NO [REFERRAL imap://u;AUTH=LOGIN@[2001:db8::1]:993/] Try this server instead."),
    (AuthFailed(FailureKind.UNAVAILABLE),
     b"a NO [UNAVAILABLE] Account is temporarily unavailable."),
    (AuthFailed(FailureKind.CONFIG), b"a NO [SERVERBUG] Account is temporarily unavailable."),
    (AuthFailed(FailureKind.PRIVACY_REQUIRED),
     b"a NO [PRIVACYREQUIRED] Authentication not allowed until SSL/TLS is enabled."),
    # backend failures (wire §1.3, imap-proxy.c)
    (backend_failure(BackendFailure.AUTH, b"L NO [AUTHENTICATIONFAILED] Wrong password"),
     b"a NO [AUTHENTICATIONFAILED] Authentication failed."),
    (backend_failure(BackendFailure.AUTH, b"L NO wrong"),
     b"a NO [AUTHENTICATIONFAILED] Authentication failed."),
    (backend_failure(BackendFailure.AUTH, b"L BAD syntax"),
     b"a NO [AUTHENTICATIONFAILED] Authentication failed."),
    (backend_failure(BackendFailure.AUTH, b"L NO [CONTACTADMIN] backend other code"),
     b"a NO [CONTACTADMIN] backend other code"),
    (backend_failure(BackendFailure.AUTH_TEMPFAIL, b"L NO [UNAVAILABLE] Backend busy."),
     b"a NO [UNAVAILABLE] Backend busy."),
    (backend_failure(BackendFailure.AUTH_TEMPFAIL, None, "[UNAVAILABLE] x"),
     b"a NO [UNAVAILABLE] x"),
    (backend_failure(BackendFailure.CONNECT, None),
     b"a NO [UNAVAILABLE] Account is temporarily unavailable."),
    (backend_failure(BackendFailure.PROTOCOL, None),
     b"a NO [UNAVAILABLE] Account is temporarily unavailable."),
    (backend_failure(BackendFailure.REMOTE, None),
     b"a NO [UNAVAILABLE] Account is temporarily unavailable."),
    (backend_failure(BackendFailure.INTERNAL, None),
     b"a NO [UNAVAILABLE] Account is temporarily unavailable."),
    (backend_failure(BackendFailure.REMOTE_CONFIG, None),
     b"a NO [SERVERBUG] Account is temporarily unavailable."),
])
def test_auth_failed(event: AuthFailed, expected: bytes) -> None:
    conn = server()
    logged_in(conn)
    assert conn.send(event) == expected + b"\r\n"
    assert conn.state is imap.ServerState.NOT_AUTHENTICATED


def test_tempfail_text_has_hostname_and_local_time() -> None:
    t = 1_700_000_000.0
    conn = server(hostname="proxy1.example.com", clock=lambda: t)
    logged_in(conn)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)).encode()
    assert conn.send(AuthFailed(FailureKind.TEMPFAIL)) == (
        b"a NO [UNAVAILABLE] Temporary authentication failure. [proxy1.example.com:"
        + stamp + b"]\r\n")


def test_referral_uses_the_clients_mechanism() -> None:
    conn = server()
    logged_in(conn, b"a AUTHENTICATE login " + b64(b"alice") + b"\r\n" + b64(b"pw") + b"\r\n")
    out = conn.send(AuthFailed(FailureKind.REFERRAL, referral=Referral("alice", "h", 143)))
    assert out == b"a NO [REFERRAL imap://alice;AUTH=LOGIN@h/] Try this server instead.\r\n"


def test_bye_and_untagged_relay() -> None:
    conn = server()
    assert conn.send(UntaggedRelay(b"* OK [ALERT] backend alert line\r\n")) == \
        b"* OK [ALERT] backend alert line\r\n"
    assert conn.send(Bye("Disconnected for inactivity.")) == \
        b"* BYE Disconnected for inactivity.\r\n"
    assert conn.state is imap.ServerState.LOGOUT
    assert conn.next_event() == ConnectionEnded("Disconnected for inactivity.")
    with pytest.raises(LocalProtocolError):
        conn.send(Bye("again"))


def test_bye_while_logging_in() -> None:
    conn = server()
    logged_in(conn)
    assert conn.send(Bye("Shutting down")) == b"* BYE Shutting down\r\n"


def test_send_misuse() -> None:
    conn = server()
    with pytest.raises(LocalProtocolError):
        conn.send(AuthFailed(FailureKind.AUTH_FAILED))
    with pytest.raises(LocalProtocolError):
        conn.send(ConnectionEnded("x"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- EOF

@pytest.mark.parametrize("data", [b"", b"a NOO", b"a LOGIN {5}\r\nali",
                                  b"a AUTHENTICATE PLAIN\r\n"])
def test_eof(data: bytes) -> None:
    conn = server()
    events, _ = run_server(conn, [data], eof=True)
    assert events[-1] == ConnectionEnded("Connection closed")
    assert conn.state is imap.ServerState.LOGOUT


def test_eof_while_logging_in_then_failure() -> None:
    conn = server()
    logged_in(conn)
    conn.receive_data(b"")
    conn.send(AuthFailed(FailureKind.AUTH_FAILED))
    assert conn.next_event() == ConnectionEnded("Connection closed")
    assert conn.eof


# ------------------------------------------------------------ fragmentation, scripts

SCRIPT = (b"a CAPABILITY\r\nb ID (\"name\" \"mutt\")\r\nc NOOP\r\nd FOO\r\n"
          b"e LOGIN {5}\r\nalice \"pw\"\r\nf AUTHENTICATE PLAIN\r\n" + PLAIN + b"\r\n"
          b"g LOGIN bob {3+}\r\npw2\r\nh LOGOUT\r\n")


def test_every_split_point_gives_the_same_result() -> None:
    whole = run_server(server(), [SCRIPT])
    assert [type(e).__name__ for e in whole[0]] == [
        "ClientIdentified", "AuthRequested", "AuthRequested", "AuthRequested", "ConnectionEnded"]
    for i in range(len(SCRIPT) + 1):
        assert run_server(server(), [c for c in (SCRIPT[:i], SCRIPT[i:]) if c]) == whole, i
    assert run_server(server(), bytewise(SCRIPT)) == whole


def test_success_answer_in_script() -> None:
    events, out = run_server(server(), [b"a NOOP\r\nb LOGIN u p\r\nc SELECT x\r\n"],
                             succeed(b"L OK Logged in", None))
    assert out == b"a OK NOOP completed.\r\nb OK Logged in\r\n"


def test_performance_of_a_login() -> None:
    # A login must cost well under 100 µs of protocol work (generous bound for CI).
    data = b"a LOGIN alice secret\r\n"
    answer = AuthSucceeded(BackendLoggedIn(b"L OK [CAPABILITY IMAP4rev1] Logged in",
                                           ("IMAP4rev1",)))
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        conn = imap.ServerConnection(disable_plaintext_auth=False)
        conn.data_to_send()
        conn.receive_data(data)
        conn.next_event()
        conn.send(answer)
    per_login = (time.perf_counter() - t0) / n
    assert per_login < 200e-6, per_login


@pytest.mark.parametrize("mech, ir, json", [
    ("XOAUTH2", b"user=alice\x01auth=Bearer tok\x01\x01",
     b'{"status":"401","schemes":"bearer","scope":"mail"}'),
    ("OAUTHBEARER", b"n,a=alice,\x01auth=Bearer tok\x01\x01", b'{"status":"invalid_token"}'),
])
@pytest.mark.parametrize("answer", [b"", b"*"])
def test_oauth_failure_is_a_json_challenge_first(mech: str, ir: bytes, json: bytes,
                                                 answer: bytes) -> None:
    conn = server(mechanisms=[mech])
    logged_in(conn, b"a AUTHENTICATE " + mech.encode() + b" " + b64(ir) + b"\r\n")
    assert conn.send(AuthFailed(FailureKind.AUTH_FAILED)) == b"+ " + b64(json) + b"\r\n"
    assert conn.state is imap.ServerState.AUTHENTICATING
    conn.receive_data(answer + b"\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert conn.state is imap.ServerState.NOT_AUTHENTICATED


def test_oauth_backend_failure_is_not_a_challenge() -> None:
    conn = server(mechanisms=["XOAUTH2"])
    logged_in(conn, b"a AUTHENTICATE XOAUTH2 " + b64(b"user=a\x01auth=Bearer t\x01\x01") + b"\r\n")
    assert conn.send(AuthFailed(FailureKind.UNAVAILABLE)) == \
        b"a NO [UNAVAILABLE] Account is temporarily unavailable.\r\n"
