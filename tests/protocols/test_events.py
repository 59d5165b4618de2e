"""_events, _secret, _errors: events are frozen, slotted and validated when built."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

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
    ProtocolError,
    Referral,
    RemoteProtocolError,
    Secret,
    UntaggedRelay,
)


def test_need_data_sentinel() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert type(NEED_DATA) is NEED_DATA


def test_secret_is_redacted() -> None:
    s = Secret("hunter2")
    assert repr(s) == str(s) == "Secret('***')"
    assert "hunter2" not in repr(Credentials("PLAIN", "alice", None, s))
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("x") and s != Secret(b"hunter2")
    assert hash(s) == hash(Secret("hunter2"))
    assert Secret(b"\xff").reveal_str() == "\udcff"
    assert Secret("\udcff").reveal_bytes() == b"\xff"
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Secret(None)  # type: ignore[arg-type]


def test_errors() -> None:
    e = RemoteProtocolError("m", reply=b"* BYE x\r\n", close=False)
    assert (e.msg, e.reply, e.close) == ("m", b"* BYE x\r\n", False)
    assert isinstance(e, ProtocolError) and isinstance(LocalProtocolError("x"), ProtocolError)
    with pytest.raises(TypeError):
        ProtocolError("abstract")
    with pytest.raises(TypeError):
        RemoteProtocolError("m", reply="str")  # type: ignore[arg-type]


def test_events_are_frozen_and_slotted() -> None:
    ev = ConnectionEnded("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.reason = "y"  # type: ignore[misc]
    assert not hasattr(ev, "__dict__")


@pytest.mark.parametrize("build", [
    lambda: Credentials("plain", "a"),
    lambda: Credentials("PLAIN", b"a"),                        # type: ignore[arg-type]
    lambda: Credentials("PLAIN", "a", password="pw"),          # type: ignore[arg-type]
    lambda: Credentials("PLAIN", "a", via_login_command=1),    # type: ignore[arg-type]
    lambda: AuthRequested("creds"),                            # type: ignore[arg-type]
    lambda: ClientIdentified((("k", 1),)),                     # type: ignore[arg-type]
    lambda: ClientIdentified([("k", "v")]),                    # type: ignore[arg-type]
    lambda: UntaggedRelay(b"* OK no crlf"),
    lambda: UntaggedRelay(b"* OK a\r\n* OK b\r\n"),
    lambda: UntaggedRelay("* OK str\r\n"),                     # type: ignore[arg-type]
    lambda: BackendLoggedIn(b"L OK a\nb"),
    lambda: BackendLoggedIn(b"L OK", ("A B",)),
    lambda: BackendLoggedIn(b"L OK", ["A"]),                   # type: ignore[arg-type]
    lambda: BackendLoginFailed("AUTH", "x"),                   # type: ignore[arg-type]
    lambda: AuthFailed("auth_failed"),                         # type: ignore[arg-type]
    lambda: AuthFailed(FailureKind.AUTH_FAILED, "a\r\n* injected"),
    lambda: AuthFailed(FailureKind.REFERRAL),
    lambda: AuthFailed(FailureKind.BACKEND),
    lambda: AuthSucceeded(None),                               # type: ignore[arg-type]
    lambda: Referral("u", "h", 0),
    lambda: Referral("u", "h/x", 143),
    lambda: Referral("u", "h", True),                          # type: ignore[arg-type]
    lambda: Bye("a\nb"),
])
def test_invalid_events_are_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LocalProtocolError):
        build()


def test_valid_events() -> None:
    c = Credentials("XOAUTH2", "alice", None, None, Secret("t"))
    assert c.user == "alice"
    assert Credentials("PLAIN", "master", "alice").user == "alice"
    assert BackendLoggedIn(b"L OK a\rb", ("", "X")).capabilities == ("", "X")
    assert BackendLoginFailed(BackendFailure.AUTH, "r", b"L NO x").line == b"L NO x"
    assert UntaggedRelay(b"* OK x\r\n").line == b"* OK x\r\n"
