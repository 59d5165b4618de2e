"""sasl: server-role decoding into Credentials, client-role encoding, abort, base64."""

from __future__ import annotations

import base64

import pytest

from mailproxy.protocols import Credentials, Secret, sasl


@pytest.mark.parametrize("data, creds", [
    (b"\0alice\0pw", Credentials("PLAIN", "alice", None, Secret("pw"))),
    (b"alice\0alice\0pw", Credentials("PLAIN", "alice", None, Secret("pw"))),
    (b"bob\0master\0mpw", Credentials("PLAIN", "master", "bob", Secret("mpw"))),
    (b"\0alice\0", Credentials("PLAIN", "alice", None, Secret(""))),
    (b"\0\xc3\xa9\xff\0p\xe4", Credentials("PLAIN", "\u00e9\udcff", None, Secret("p\udce4"))),
])
def test_decode_plain(data: bytes, creds: Credentials) -> None:
    assert sasl.decode_plain(data) == creds


@pytest.mark.parametrize("data", [b"", b"alice", b"\0alice", b"\0\0pw", b"a\0b\0c\0d"])
def test_decode_plain_invalid(data: bytes) -> None:
    with pytest.raises(sasl.MalformedResponse):
        sasl.decode_plain(data)


@pytest.mark.parametrize("data, user, token", [
    (b"user=alice\x01auth=Bearer tok\x01\x01", "alice", "tok"),
    (b"auth=bearer tok\x01user=alice\x01\x01", "alice", "tok"),
    (b"user=alice\x01extra=1\x01auth=Bearer a b\x01\x01", "alice", "a b"),
])
def test_decode_xoauth2(data: bytes, user: str, token: str) -> None:
    assert sasl.decode_xoauth2(data) == Credentials("XOAUTH2", user, None, None, Secret(token))


@pytest.mark.parametrize("data", [
    b"user=alice\x01\x01", b"auth=Bearer t\x01\x01", b"user=alice\x01auth=Basic t\x01\x01",
    b"user=alice\x01auth=Bearer \x01\x01", b"user=\x01auth=Bearer t\x01\x01", b"user=a\0\x01",
])
def test_decode_xoauth2_invalid(data: bytes) -> None:
    with pytest.raises(sasl.MalformedResponse):
        sasl.decode_xoauth2(data)


@pytest.mark.parametrize("data, user", [
    (b"n,a=alice,\x01auth=Bearer tok\x01\x01", "alice"),
    (b"y,a=a=3Db=2Cc,\x01host=h\x01port=1\x01auth=Bearer tok\x01\x01", "a=b,c"),
])
def test_decode_oauthbearer(data: bytes, user: str) -> None:
    assert sasl.decode_oauthbearer(data) == Credentials("OAUTHBEARER", user, None, None,
                                                        Secret("tok"))


@pytest.mark.parametrize("data", [
    b"", b"\x01auth=Bearer t\x01\x01", b"n,,\x01auth=Bearer t\x01\x01",
    b"p=tls-unique,a=x,\x01auth=Bearer t\x01\x01", b"f,n,a=x,\x01auth=Bearer t\x01\x01",
    b"n,a=x=2,\x01auth=Bearer t\x01\x01", b"n,ax,\x01auth=Bearer t\x01\x01",
    b"n,z=1,a=x,\x01auth=Bearer t\x01\x01", b"n,a=x,\x01auth=Token t\x01\x01",
])
def test_decode_oauthbearer_invalid(data: bytes) -> None:
    with pytest.raises(sasl.MalformedResponse):
        sasl.decode_oauthbearer(data)


def test_base64_and_abort() -> None:
    assert sasl.decode_base64(b"YWJj") == b"abc"
    assert sasl.decode_base64(b" YW Jj\t") == b"abc"
    assert sasl.decode_base64(b"") == b""
    for bad in (b"YWJ", b"YQ", b"Y=Jj", b"YWJj=", b"!!!!", b"YWJj\xff"):
        with pytest.raises(sasl.InvalidBase64):
            sasl.decode_base64(bad)
    with pytest.raises(sasl.SaslAborted):
        sasl.decode_response(b"*")
    assert sasl.decode_response(b"YWJj") == b"abc"
    assert sasl.encode_base64(b"\0a\0b") == b"AGEAYg=="


def test_server_exchange_login() -> None:
    ex = sasl.ServerExchange("login")
    assert ex.start(None) == b"Username:"
    assert ex.step(b"alice") == b"Password:"
    assert ex.step(b"pw") == Credentials("LOGIN", "alice", None, Secret("pw"))
    ex = sasl.ServerExchange("LOGIN")
    assert ex.start(b"alice") == b"Password:"
    with pytest.raises(sasl.MalformedResponse):
        sasl.ServerExchange("LOGIN").step(b"")
    with pytest.raises(ValueError):
        sasl.ServerExchange("CRAM-MD5")


def test_server_exchange_empty_challenge() -> None:
    for mech in ("PLAIN", "XOAUTH2", "OAUTHBEARER"):
        assert sasl.ServerExchange(mech).start(None) == b""
    with pytest.raises(sasl.MalformedResponse):
        sasl.ServerExchange("PLAIN").start(b"")


def test_client_encoders() -> None:
    assert sasl.plain_response("alice", "master", "pw") == b"alice\0master\0pw"
    assert sasl.plain_response(None, "alice", b"p\xff") == b"\0alice\0p\xff"
    assert sasl.login_responses("alice", "pw") == (b"alice", b"pw")
    assert sasl.xoauth2_response("a", "t") == b"user=a\x01auth=Bearer t\x01\x01"
    assert sasl.oauthbearer_response("a,b=c", "t", "h", 993) == \
        b"n,a=a=2Cb=3Dc,\x01host=h\x01port=993\x01auth=Bearer t\x01\x01"
    # round trips through the server role
    assert sasl.decode_plain(sasl.plain_response("x", "y", "z")) == \
        Credentials("PLAIN", "y", "x", Secret("z"))
    assert sasl.decode_oauthbearer(sasl.oauthbearer_response("a,b=c", "t")).authcid == "a,b=c"


def test_client_exchange() -> None:
    ex = sasl.ClientExchange("PLAIN", authzid="u", authcid="m", password="p")
    ex.input(b"")
    assert ex.output() == b"u\0m\0p"
    with pytest.raises(sasl.SaslClientError, match="Server didn't finish authentication"):
        ex.input(b"")
    ex = sasl.ClientExchange("PLAIN", authcid="m", password="p")
    with pytest.raises(sasl.SaslClientError, match="non-empty initial response"):
        ex.input(b"x")
    ex = sasl.ClientExchange("LOGIN", authcid="u", password="p")
    assert ex.output() == b""
    ex.input(b"Username:")
    assert ex.output() == b"u"
    ex.input(b"Password:")
    assert ex.output() == b"p"
    with pytest.raises(sasl.SaslClientError):
        ex.input(b"")
    ex = sasl.ClientExchange("XOAUTH2", authcid="u", password="t")
    assert base64.b64encode(ex.output()) == base64.b64encode(b"user=u\x01auth=Bearer t\x01\x01")
    ex.input(b"")   # empty after our response: success
    with pytest.raises(sasl.SaslClientError, match="Failed to authenticate: invalid_token"):
        ex.input(b'{"status":"invalid_token"}')
    with pytest.raises(sasl.SaslClientError, match="Status value missing"):
        ex.input(b'{"schemes":"bearer"}')
    with pytest.raises(sasl.SaslClientError, match="Error parsing JSON"):
        ex.input(b"not json")
    with pytest.raises(ValueError):
        sasl.ClientExchange("CRAM-MD5", authcid="u", password="p")
