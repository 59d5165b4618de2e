"""static passdb: args exactly as PasswordDatabase.Static / passdb_template_build()."""

from __future__ import annotations

import pytest

from mailproxy.passdb import AuthOutcome, PassdbConfigError, schemes
from mailproxy.passdb.static import StaticPassdb, parse_template


def test_parse_template() -> None:
    assert parse_template("password=secret proxy=y host=127.0.0.1") == [
        ("password", "secret"), ("proxy", "y"), ("host", "127.0.0.1")]
    # no quoting: spaces always separate; a key without '=' has an empty value
    assert parse_template('nopassword  reason="two words"') == [
        ("nopassword", ""), ("reason", '"two'), ("words\"", "")]
    assert parse_template("a=b=c") == [("a", "b=c")]
    assert parse_template("") == []
    with pytest.raises(PassdbConfigError, match="key must not be empty"):
        parse_template("=x")
    with pytest.raises(PassdbConfigError, match="host: Unknown variable '%q'"):
        parse_template("host=%q")


async def test_password(chain_of, req) -> None:
    chain = chain_of(("static", "password=secret proxy=y host=10.1.1.1"))
    ok = await chain.authenticate(req("anyone", "secret"))
    assert ok.outcome is AuthOutcome.OK
    assert ok.fields == (("proxy", "y"), ("host", "10.1.1.1"))
    assert (await chain.authenticate(req("anyone", "Secret"))).outcome is AuthOutcome.FAILED


async def test_password_with_scheme_and_variables(chain_of, req) -> None:
    sha = schemes.generate("SSHA256", "hunter2")
    chain = chain_of(("static", f"password={sha}"))
    assert (await chain.authenticate(req("x", "hunter2"))).outcome is AuthOutcome.OK
    per_user = chain_of(("static", "password=%n-pw home=/home/%d/%n"))
    res = await per_user.authenticate(req("joe@example.com", "joe-pw"))
    assert res.outcome is AuthOutcome.OK
    assert dict(res.fields)["home"] == "/home/example.com/joe"
    assert (await per_user.authenticate(req("ann@x", "joe-pw"))).outcome is \
        AuthOutcome.FAILED


@pytest.mark.parametrize("args", ["nopassword=y", "nopassword", "nopassword=no"])
async def test_nopassword(chain_of, req, args: str) -> None:
    # Dovecot booleans are true whenever the field exists, whatever the value.
    chain = chain_of(("static", f"{args} proxy=y host=h"))
    res = await chain.authenticate(req("u", "whatever"))
    assert res.outcome is AuthOutcome.OK
    assert "nopassword" not in dict(res.fields)       # never leaks past its passdb


async def test_no_password_at_all(chain_of, req) -> None:
    chain = chain_of(("static", "proxy=y host=h"))
    res = await chain.authenticate(req("u", "x"))
    assert res.outcome is AuthOutcome.FAILED
    assert "No password returned" in res.detail
    # a lookup without a password (LMTP, `lookup` without --password) still finds it
    assert (await chain.authenticate(req("u", None))).outcome is AuthOutcome.OK


def test_repr_has_no_password() -> None:
    db = StaticPassdb("password=topsecret")
    assert "topsecret" not in repr(db)
