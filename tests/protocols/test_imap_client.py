"""imap.ClientConnection: the backend-facing login, byte for byte as Dovecot's
imap-proxy.c (wire reference §1.1-§1.3)."""

from __future__ import annotations

import base64

import pytest

from imap_helpers import FWD, bytewise, login, run_client
from mailproxy.protocols import (
    NEED_DATA,
    BackendFailure,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    ForwardedFields,
    LocalProtocolError,
    Secret,
    StartTLSRequired,
    UntaggedRelay,
    imap,
)

CAPS = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN"
BANNER = b"* OK [CAPABILITY " + CAPS + b"] Dovecot ready.\r\n"
BANNER_NO_CAPS = b"* OK Dovecot ready.\r\n"
ID = (b'I ID ("x-session-id" "SESSIONID0000000" "x-originating-ip" "192.0.2.1" '
      b'"x-originating-port" "40000" "x-connected-ip" "198.51.100.1" '
      b'"x-connected-port" "143" "x-proxy-ttl" "4")\r\n')
LOGIN = b'L LOGIN "alice" "alicepw"\r\n'
OK = b"L OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in"
ID_REPLY = b'* ID ("name" "Dovecot")\r\nI OK ID completed.\r\n'


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def client(**kw: object) -> imap.ClientConnection:
    return imap.ClientConnection(login(**kw))


def test_nothing_is_sent_before_the_banner() -> None:
    conn = client()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
    assert conn.state is imap.ClientState.BANNER
    assert conn.state_description == "/none"


def test_basic_pipelined_login() -> None:
    conn = client()
    events, out = run_client(conn, [BANNER])
    assert out == ID + LOGIN          # one write, right after the banner
    assert events == []
    assert conn.state is imap.ClientState.LOGIN
    assert conn.state_description == "id+login/banner"
    events, out = run_client(conn, [ID_REPLY + OK + b"\r\n* 1 EXISTS\r\n"])
    assert events == [BackendLoggedIn(OK, ("IMAP4rev1", "IDLE", "MOVE"))]
    assert out == b""
    assert conn.state is imap.ClientState.LOGGED_IN
    assert conn.trailing_data() == b"* 1 EXISTS\r\n"
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_received_data_may_be_a_bytearray() -> None:
    # what trio's memory streams and many socket wrappers hand over; the compiled build
    # checks argument types, so this is checked in both builds
    conn = client()
    events, out = run_client(conn, [bytearray(BANNER), bytearray(ID_REPLY + OK + b"\r\n")])
    assert out == ID + LOGIN
    assert events == [BackendLoggedIn(OK, ("IMAP4rev1", "IDLE", "MOVE"))]


FIRST_WRITES = [
    # no capabilities in the banner: no ID at all, C CAPABILITY before the login
    ({}, BANNER_NO_CAPS, b"C CAPABILITY\r\n" + LOGIN),
    # capabilities without ID
    ({}, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", LOGIN),
    ({"not_trusted": True}, BANNER, LOGIN),
    ({"forwarded": None}, BANNER, LOGIN),
    # the client asked for CAPABILITY itself
    ({"client_sent_capability": True}, BANNER, ID + b"C CAPABILITY\r\n" + LOGIN),
    ({"destuser": "bob", "password": Secret('p "q\\')},
     BANNER, ID + b'L LOGIN "bob" "p \\"q\\\\"\r\n'),
    # CR/LF/8-bit or more than 4 quoted-specials: a literal, sent without waiting
    ({"password": Secret("p\u00e4ss")}, BANNER, ID + b'L LOGIN "alice" {5}\r\np\xc3\xa4ss\r\n'),
    ({"password": Secret('"""""')}, BANNER, ID + b'L LOGIN "alice" {5}\r\n"""""\r\n'),
    ({"password": Secret(b"raw\xffbytes")}, BANNER, ID + b'L LOGIN "alice" {9}\r\nraw\xffbytes\r\n'),
    # master user: AUTHENTICATE PLAIN destuser\0master\0pass (SASL-IR)
    ({"master_user": "masteruser", "password": Secret("masterpw")}, BANNER,
     ID + b"L AUTHENTICATE PLAIN " + b64(b"alice\0masteruser\0masterpw") + b"\r\n"),
    ({"mechanism": "plain"}, BANNER,
     ID + b"L AUTHENTICATE PLAIN " + b64(b"alice\0alice\0alicepw") + b"\r\n"),
    ({"mechanism": "LOGIN"}, BANNER, ID + b"L AUTHENTICATE LOGIN =\r\n"),
    ({"mechanism": "XOAUTH2", "token": Secret("tok")}, BANNER,
     ID + b"L AUTHENTICATE XOAUTH2 " + b64(b"user=alice\x01auth=Bearer tok\x01\x01") + b"\r\n"),
    ({"mechanism": "OAUTHBEARER", "password": Secret("tok")}, BANNER,
     ID + b"L AUTHENTICATE OAUTHBEARER " + b64(b"n,a=alice,\x01auth=Bearer tok\x01\x01") + b"\r\n"),
    # no SASL-IR: the initial response waits for "+"
    ({"mechanism": "PLAIN"}, b"* OK [CAPABILITY IMAP4rev1 ID] x\r\n", ID + b"L AUTHENTICATE PLAIN\r\n"),
    # nopipelining: ID alone
    ({"nopipelining": True}, BANNER, ID),
    ({"nopipelining": True}, BANNER_NO_CAPS, b"C CAPABILITY\r\n"),
    # STARTTLS: ID and STARTTLS in one write, the rest after TLS
    ({"starttls": True}, b"* OK [CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED] x\r\n",
     ID + b"S STARTTLS\r\n"),
    ({"starttls": True}, BANNER_NO_CAPS, b"S STARTTLS\r\n"),
]


@pytest.mark.parametrize("kw, banner, expected", FIRST_WRITES,
                         ids=[str(i) for i in range(len(FIRST_WRITES))])
def test_first_write(kw: dict[str, object], banner: bytes, expected: bytes) -> None:
    conn = client(**kw)
    events, out = run_client(conn, [banner])
    assert events == []
    assert out == expected
    events2, out2 = run_client(client(**kw), bytewise(banner))
    assert (events2, out2) == (events, out)


def test_forwarded_fields_in_id() -> None:
    fwd = ForwardedFields("s", "192.0.2.9", 1, "10.0.0.1", 993, ttl=3,
                          forward=(("foo", "bar"), ("quoted", 'a"b\\c'), ("nil", None)),
                          retained_id=(("name", "Thunderbird"), ("version", None)))
    events, out = run_client(client(forwarded=fwd), [BANNER])
    assert out == (b'I ID ("name" "Thunderbird" "version" NIL "x-session-id" "s" '
                   b'"x-originating-ip" "192.0.2.9" "x-originating-port" "1" '
                   b'"x-connected-ip" "10.0.0.1" "x-connected-port" "993" "x-proxy-ttl" "2" '
                   b'"x-forward-foo" "bar" "x-forward-quoted" "a\\"b\\\\c" "x-forward-nil" NIL)'
                   b"\r\n" + LOGIN)


def test_ttl_loop_fails_before_sending_anything() -> None:
    conn = client(forwarded=ForwardedFields("s", "1.2.3.4", 1, "5.6.7.8", 2, ttl=1))
    assert conn.next_event() == BackendLoginFailed(
        BackendFailure.REMOTE_CONFIG, "TTL reached zero - proxies appear to be looping?")
    assert conn.data_to_send() == b""
    assert conn.state is imap.ClientState.FAILED


def test_nopipelining_waits_for_id_reply() -> None:
    conn = client(nopipelining=True)
    assert run_client(conn, [BANNER]) == ([], ID)
    assert conn.state is imap.ClientState.ID
    events, out = run_client(conn, [b'* ID ("name" "Dovecot")\r\n'])
    assert (events, out) == ([], b"")
    events, out = run_client(conn, [b"I OK ID completed.\r\n"])
    assert out == LOGIN and conn.state is imap.ClientState.LOGIN
    events, _ = run_client(conn, [OK + b"\r\n"])
    assert isinstance(events[0], BackendLoggedIn)


def test_nopipelining_waits_for_capability_reply() -> None:
    conn = client(nopipelining=True, client_sent_capability=True)
    assert run_client(conn, [BANNER])[1] == ID
    assert run_client(conn, [ID_REPLY])[1] == b"C CAPABILITY\r\n"
    assert conn.state is imap.ClientState.CAPABILITY
    out = run_client(conn, [b"* CAPABILITY IMAP4rev1 X\r\nC OK done.\r\n"])[1]
    assert out == LOGIN
    events, _ = run_client(conn, [b"L OK Logged in\r\n"])
    assert events == [BackendLoggedIn(b"L OK Logged in", ("IMAP4rev1", "X"))]


def test_starttls() -> None:
    conn = client(starttls=True)
    banner = b"* OK [CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED] x\r\n"
    assert run_client(conn, [banner])[1] == ID + b"S STARTTLS\r\n"
    conn.receive_data(ID_REPLY + b"S OK Begin TLS negotiation now.\r\n* injected\r\n")
    assert conn.next_event() == StartTLSRequired()
    assert conn.state is imap.ClientState.TLS_HANDSHAKE
    conn.receive_data(b"L OK plaintext injection\r\n")
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.tls_started()
    assert conn.trailing_data() == b""
    # LOGINDISABLED does not stop the login over TLS; caps known, so no C CAPABILITY
    assert conn.data_to_send() == LOGIN
    events, _ = run_client(conn, [b"L OK Logged in\r\n"])
    assert events == [BackendLoggedIn(b"L OK Logged in",
                                      ("IMAP4rev1", "ID", "STARTTLS", "LOGINDISABLED"))]


def test_starttls_without_known_caps_asks_for_them_after_tls() -> None:
    conn = client(starttls=True)
    assert run_client(conn, [BANNER_NO_CAPS])[1] == b"S STARTTLS\r\n"
    events, out = run_client(conn, [b"S OK go\r\n"])
    assert events == [StartTLSRequired()]
    assert out == b"C CAPABILITY\r\n" + LOGIN


FAILURES = [
    ({"starttls": True}, BANNER,
     BackendLoginFailed(BackendFailure.REMOTE_CONFIG, "STARTTLS not supported")),
    ({"starttls": True}, BANNER_NO_CAPS + b"S NO [UNAVAILABLE] no TLS here\r\n",
     BackendLoginFailed(BackendFailure.REMOTE, "STARTTLS failed: [UNAVAILABLE] no TLS here")),
    ({}, b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] x\r\n",
     BackendLoginFailed(BackendFailure.REMOTE_CONFIG,
                        "LOGINDISABLED advertised, but SSL/TLS not enabled")),
    ({}, b"* BYE not a real IMAP server\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL, "Invalid banner: * BYE not a real IMAP server")),
    ({}, b"HTTP/1.1 400 \x01Bad\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL, "Invalid banner: HTTP/1.1 400 ?Bad")),
    ({}, b"* OK " + b"x" * 5000 + b"\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL, "Too long input line")),
    ({}, BANNER + b"* " + b"x" * 4095,   # 4097 bytes without LF: over the 4096-byte buffer
     BackendLoginFailed(BackendFailure.PROTOCOL, "Too long input line")),
    ({}, BANNER + b"L NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
     BackendLoginFailed(BackendFailure.AUTH, "[AUTHENTICATIONFAILED] Authentication failed.",
                        b"L NO [AUTHENTICATIONFAILED] Authentication failed.")),
    ({}, BANNER + b"L NO [UNAVAILABLE] Backend temporarily busy.\r\n",
     BackendLoginFailed(BackendFailure.AUTH_TEMPFAIL, "[UNAVAILABLE] Backend temporarily busy.",
                        b"L NO [UNAVAILABLE] Backend temporarily busy.")),
    ({}, BANNER + b"L NO [unavailable] x\r\n",
     BackendLoginFailed(BackendFailure.AUTH_TEMPFAIL, "[unavailable] x", b"L NO [unavailable] x")),
    ({}, BANNER + b"L NO [CONTACTADMIN] other\r\n",
     BackendLoginFailed(BackendFailure.AUTH, "[CONTACTADMIN] other", b"L NO [CONTACTADMIN] other")),
    ({}, BANNER + b"L no wrong\r\n",
     BackendLoginFailed(BackendFailure.AUTH, "wrong", b"L no wrong")),
    ({}, BANNER + b"L BAD syntax\r\n",
     BackendLoginFailed(BackendFailure.AUTH, "BAD syntax", b"L BAD syntax")),
    ({}, BANNER + b"L OK\r\n",   # no text after OK: not Dovecot's "L OK " success
     BackendLoginFailed(BackendFailure.AUTH, "OK", b"L OK")),
    ({"mechanism": "PLAIN"}, b"* OK [CAPABILITY ID] x\r\n" + ID_REPLY + b"+\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL, "Invalid base64 data in AUTHENTICATE response")),
    ({"mechanism": "PLAIN"}, b"* OK [CAPABILITY ID] x\r\n+ !!\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL, "Invalid base64 data in AUTHENTICATE response")),
    ({"mechanism": "PLAIN"}, b"* OK [CAPABILITY ID] x\r\n+ eA==\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL,
                        "Invalid authentication data: Server sent non-empty initial response")),
    ({"mechanism": "PLAIN"}, BANNER + b"+ \r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL,
                        "Invalid authentication data: Server didn't finish authentication")),
    ({"mechanism": "XOAUTH2", "token": Secret("t")},
     BANNER + b"+ " + b64(b'{"status":"401","schemes":"bearer","scope":"mail"}') + b"\r\n",
     BackendLoginFailed(BackendFailure.PROTOCOL,
                        "Invalid authentication data: Failed to authenticate: 401")),
]


@pytest.mark.parametrize("kw, data, failure", FAILURES,
                         ids=[f.reason[:40] for _, _, f in FAILURES])
def test_failures(kw: dict[str, object], data: bytes, failure: BackendLoginFailed) -> None:
    events, _ = run_client(client(**kw), [data])
    assert events == [failure]
    events, _ = run_client(client(**kw), bytewise(data))
    assert events == [failure]


def test_eof_is_a_connect_failure() -> None:
    conn = client()
    events, _ = run_client(conn, [BANNER, ID_REPLY], eof=True)
    assert events == [BackendLoginFailed(BackendFailure.CONNECT,
                                         "Disconnected by server: Connection closed")]
    assert conn.state_description == "login/id"


def test_untagged_lines_during_login() -> None:
    conn = client()
    run_client(conn, [BANNER])
    events, out = run_client(conn, [
        b"* OK [ALERT] backend alert line\r\n",
        b"* CAPABILITY IMAP4rev1 NEWCAP\r\n",          # replaces the caps, not relayed
        b'* ID ("name" "Dovecot")\r\n',                 # swallowed
        b"* BYE going away\r\n",                        # swallowed
        b"X OK stray tagged line\r\n",                  # ignored
        b"+ OK\r\n",                                    # ignored while using LOGIN
        b"I OK ID completed.\r\n",
        b"L OK Logged in\r\n",
    ])
    assert events == [UntaggedRelay(b"* OK [ALERT] backend alert line\r\n"),
                      BackendLoggedIn(b"L OK Logged in", ("IMAP4rev1", "NEWCAP"))]
    assert out == b""


def test_authenticate_without_sasl_ir() -> None:
    conn = client(mechanism="PLAIN")
    banner = b"* OK [CAPABILITY IMAP4rev1 ID] x\r\n"
    assert run_client(conn, [banner])[1] == ID + b"L AUTHENTICATE PLAIN\r\n"
    events, out = run_client(conn, [ID_REPLY, b"+ \r\n"])
    assert out == b64(b"alice\0alice\0alicepw") + b"\r\n"
    assert conn.state_description == "auth-continue/auth-continue"
    events, _ = run_client(conn, [b"L OK Logged in\r\n"])
    assert isinstance(events[0], BackendLoggedIn)


def test_authenticate_login_mechanism_steps() -> None:
    conn = client(mechanism="LOGIN")
    assert run_client(conn, [b"* OK [CAPABILITY IMAP4rev1] x\r\n"])[1] == \
        b"L AUTHENTICATE LOGIN\r\n"
    assert run_client(conn, [b"+ VXNlcm5hbWU6\r\n"])[1] == b64(b"alice") + b"\r\n"
    assert run_client(conn, [b"+ UGFzc3dvcmQ6\r\n"])[1] == b64(b"alicepw") + b"\r\n"
    events, _ = run_client(conn, [b"+ eA==\r\n"])
    assert events == [BackendLoginFailed(
        BackendFailure.PROTOCOL, "Invalid authentication data: Server didn't finish authentication")]


def test_literal_continuations_of_our_id_are_skipped() -> None:
    fwd = ForwardedFields("s", "1.2.3.4", 1, "5.6.7.8", 2, forward=(("x", "line1\r\nline2"),))
    conn = client(mechanism="PLAIN", forwarded=fwd)
    _, out = run_client(conn, [b"* OK [CAPABILITY ID] x\r\n"])
    assert b'"x-forward-x" {12}\r\nline1\r\nline2)\r\nL AUTHENTICATE PLAIN\r\n' in out
    # the backend's "+ OK" for our literal is not the AUTHENTICATE continuation
    _, out = run_client(conn, [b"+ OK\r\n"])
    assert out == b""
    _, out = run_client(conn, [b"+ \r\n"])
    assert out == b64(b"alice\0alice\0alicepw") + b"\r\n"


def test_nul_in_backend_line_cuts_it() -> None:
    conn = client()
    run_client(conn, [BANNER])
    events, _ = run_client(conn, [b"* OK a\0b\r\nL OK Logged\0 in\r\n"])
    assert events == [UntaggedRelay(b"* OK a\r\n"), BackendLoggedIn(b"L OK Logged", events[1].capabilities)]  # type: ignore[union-attr]


def test_every_split_point() -> None:
    data = BANNER + ID_REPLY + b"* OK [ALERT] hello\r\n* CAPABILITY A B\r\n" + OK + b"\r\ntrail"
    whole = run_client(client(), [data])
    for i in range(1, len(data)):
        assert run_client(client(), [data[:i], data[i:]]) == whole, i


def test_backend_login_validation() -> None:
    with pytest.raises(LocalProtocolError, match="Unsupported SASL mechanism CRAM-MD5"):
        BackendLogin("alice", Secret("x"), mechanism="CRAM-MD5")
    with pytest.raises(LocalProtocolError, match="password not given"):
        BackendLogin("alice")
    with pytest.raises(LocalProtocolError):
        BackendLogin("alice", Secret("a\0b"))
    with pytest.raises(LocalProtocolError):
        BackendLogin("ali\r\nce", Secret("x"))
    assert BackendLogin("a", None, mechanism="xoauth2", token=Secret("t")).mechanism == "XOAUTH2"
    assert BackendLogin("a", Secret("p"), master_user="").master_user is None
    with pytest.raises(LocalProtocolError):
        imap.ClientConnection("alice")  # type: ignore[arg-type]


def test_fwd_defaults() -> None:
    assert FWD.ttl == 5 and not FWD.loop_detected


def test_capability_tokens_with_bracket_are_dropped() -> None:
    # found by fuzzing: "]" in an untagged CAPABILITY line must not break the event
    conn = client()
    run_client(conn, [BANNER])
    events, _ = run_client(conn, [b"* CAPABILITY T] a\r\nL OK x\r\n"])
    assert events == [BackendLoggedIn(b"L OK x", ("a",))]
