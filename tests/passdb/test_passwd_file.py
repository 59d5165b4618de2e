"""passwd-file: format, args, per-user files, reload on change (real files, no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from mailproxy.passdb import AuthOutcome, PassdbConfigError, schemes
from mailproxy.passdb.passwd_file import PasswdFilePassdb, parse_args, parse_passwd_file


# --- the file format ---------------------------------------------------------------------

def test_parse_format() -> None:
    text = (
        "# a comment\n"
        "\n"
        ":nouser:x\n"
        "alice:{PLAIN}pw:1000:1000:Alice A:/home/alice:/bin/sh:proxy=y host=10.0.0.5\n"
        "bob:{PLAIN}pw\n"
        "carol\n"
        "dave:{PLAIN}pw::::::userdb_mail=maildir:~/Maildir allow_nets=10.0.0.0/8  nodelay\n"
        "erin:{PLAIN}pw:1:1::/home/erin::::userdb_mail=mbox:~/mail\n"
        "alice:{PLAIN}second\n"
        "frank:{PLAIN}pw::::::a=1\r\n"
        "gina:secretcrypt[13]\n"
        "hank:5f4dcc3b5aa765d61d8327deb882cf99[34]\n"
        "ivan:0123456789abcdef0123456789abcdef[56]\n"
        "judy:short[56]\n"
    )
    users, problems = parse_passwd_file(text)
    assert users["alice"].password == "{PLAIN}pw"              # the first one wins
    assert users["alice"].extra_fields == (("proxy", "y"), ("host", "10.0.0.5"))
    assert users["bob"].password == "{PLAIN}pw" and users["bob"].extra_fields == ()
    assert users["carol"].password is None
    # extra fields may contain ':' (the rest of the line is joined back), spaces separate
    assert users["dave"].extra_fields == (
        ("userdb_mail", "maildir:~/Maildir"), ("allow_nets", "10.0.0.0/8"), ("nodelay", ""))
    # old format: an empty 8th field, the 9th is userdb mail: no passdb extra fields
    assert users["erin"].extra_fields == ()
    assert users["frank"].extra_fields == (("a", "1"),)        # CRLF tolerated
    assert users["gina"].password == "{CRYPT}secretcrypt"
    assert users["hank"].password == "{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99"
    assert users["ivan"].password == "{DIGEST-MD5}0123456789abcdef0123456789abcdef"
    assert "judy" not in users
    assert "" not in users and "# a comment" not in users
    assert any("alice exists more than once" in p for p in problems)
    assert any("judy has invalid password" in p for p in problems)
    assert "pw" not in repr(users["alice"])


def test_parse_args(tmp_path: Path) -> None:
    assert parse_args("/etc/users") == ("CRYPT", "%u", "/etc/users")
    assert parse_args("scheme=ssha256 username_format=%n /etc/a b") == (
        "SSHA256", "%n", "/etc/a b")
    assert parse_args("scheme=plain users") == ("PLAIN", "%u", "users")
    with pytest.raises(PassdbConfigError, match="Unknown setting: foo"):
        parse_args("foo=bar /etc/users")
    with pytest.raises(PassdbConfigError, match="Missing args"):
        parse_args("scheme=plain")
    with pytest.raises(PassdbConfigError, match="unknown password scheme 'rot13'"):
        parse_args("scheme=rot13 /etc/users")
    with pytest.raises(PassdbConfigError, match="Unknown variable '%z'"):
        PasswdFilePassdb("/etc/%z/users")
    with pytest.raises(PassdbConfigError, match="username_format"):
        PasswdFilePassdb("username_format=%{nosuch} /etc/users")
    pf = PasswdFilePassdb("users", base_dir=tmp_path)
    assert pf.path == str(tmp_path / "users")
    assert PasswdFilePassdb("/etc/100%%/users").path == "/etc/100%/users"


# --- lookups -------------------------------------------------------------------------

async def test_default_scheme_is_crypt(chain_of, req) -> None:
    sha512 = schemes.generate("SHA512-CRYPT", "pw").split("}", 1)[1]
    md5 = schemes.generate("MD5-CRYPT", "pw").split("}", 1)[1]
    chain = chain_of(("passwd-file", "users"), files={
        "users": f"a:{sha512}\nb:{md5}\nc:pw\nd:{{PLAIN}}pw\n"})
    for user in ("a", "b", "d"):
        assert (await chain.authenticate(req(user, "pw"))).outcome is AuthOutcome.OK, user
        assert (await chain.authenticate(req(user, "px"))).outcome is AuthOutcome.FAILED
    # "pw" is not a valid crypt() hash: nothing matches it
    assert (await chain.authenticate(req("c", "pw"))).outcome is AuthOutcome.FAILED


async def test_scheme_arg(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"), files={
        "users": "a:pw\nb:{SHA}" + schemes.generate("SHA", "pw2").split("}")[1] + "\n"})
    assert (await chain.authenticate(req("a", "pw"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(req("b", "pw2"))).outcome is AuthOutcome.OK


async def test_empty_or_missing_password(chain_of, req) -> None:
    # Default scheme CRYPT: an empty hash never matches (crypt_verify()).
    chain = chain_of(("passwd-file", "users"), files={
        "users": "a:\nb\nc:::::::nopassword\n"})
    assert (await chain.authenticate(req("a", ""))).outcome is AuthOutcome.FAILED
    assert (await chain.authenticate(req("b", ""))).outcome is AuthOutcome.FAILED
    # scheme=PLAIN: an empty password is the password "" (as in Dovecot).
    plain = chain_of(("passwd-file", "scheme=PLAIN users"))
    assert (await plain.authenticate(req("a", ""))).outcome is AuthOutcome.OK
    assert (await plain.authenticate(req("a", "x"))).outcome is AuthOutcome.FAILED
    res = await chain.authenticate(req("c", "anything"))
    assert res.outcome is AuthOutcome.OK
    assert "nopassword" not in dict(res.fields)


async def test_username_format(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN username_format=%n users"),
                     files={"users": "alice:pw::::::home=/home/%d/%n\n"})
    res = await chain.authenticate(req("alice@example.com", "pw"))
    assert res.outcome is AuthOutcome.OK
    assert res.user == "alice@example.com"
    assert dict(res.fields)["home"] == "/home/example.com/alice"


async def test_extra_fields_are_expanded(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"), files={
        "users": "alice:pw::::::host=%{passdb:h} h=late x=%s:%r y=%u user=Alice@%{passdb:d} "
                 "d=other z=%u\n"})
    res = await chain.authenticate(req("Alice", "pw"))
    f = dict(res.fields)
    assert f["x"] == "imap:192.0.2.7"
    assert f["host"] == ""            # %{passdb:h} before h= is set: empty
    assert f["y"] == f["z"] == "alice"   # %u is the user before this line's user=
    assert res.user == "Alice@"          # d= comes after user=


async def test_unknown_variable_in_file_is_a_tempfail(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"),
                     files={"users": "alice:pw::::::x=%{nosuch}\n"})
    res = await chain.authenticate(req("alice", "pw"))
    assert res.outcome is AuthOutcome.TEMPFAIL
    assert "nosuch" in res.detail
    problems = await chain.check()
    assert problems and "nosuch" in problems[0][1] and problems[0][0] == "test:1"


async def test_per_domain_files(chain_of, req, tmp_path: Path) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN username_format=%n auth/%d/passwd"),
                     files={"auth/a.example/passwd": "joe:pa\n",
                            "auth/b.example/passwd": "joe:pb\n",
                            "passwd": "joe:root\n"})
    assert (await chain.authenticate(req("joe@a.example", "pa"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(req("joe@b.example", "pb"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(req("joe@b.example", "pa"))).outcome is \
        AuthOutcome.FAILED
    # no file for the domain: unknown user
    assert (await chain.authenticate(req("joe@c.example", "x"))).outcome is \
        AuthOutcome.NOUSER
    # a variable's value cannot climb out of the directory
    assert (await chain.authenticate(req("joe@..", "root"))).outcome is AuthOutcome.NOUSER
    chain2 = chain_of(("passwd-file",
                       "scheme=PLAIN username_format=%n auth/%{username}.d/passwd"),
                      files={"auth/joe.d/passwd": "joe:pj\n"})
    assert (await chain2.authenticate(req("joe", "pj"))).outcome is AuthOutcome.OK


async def test_missing_file_is_unknown_user_and_unreadable_is_tempfail(
        chain_of, req, tmp_path: Path) -> None:
    chain = chain_of(("passwd-file", "nothere"))
    assert (await chain.authenticate(req("alice", "x"))).outcome is AuthOutcome.NOUSER
    assert await chain.check() == [("test:1", f"missing passwd file: {tmp_path / 'nothere'}")]
    (tmp_path / "adir").mkdir()
    chain = chain_of(("passwd-file", "adir"))
    res = await chain.authenticate(req("alice", "x"))
    assert res.outcome is AuthOutcome.TEMPFAIL
    assert "adir" in res.detail


async def test_reload_on_change(chain_of, req, tmp_path: Path) -> None:
    path = tmp_path / "users"
    chain = chain_of(("passwd-file", "scheme=PLAIN users"),
                     files={"users": "alice:one::::::host=h1\n"})
    res = await chain.authenticate(req("alice", "one"))
    assert res.outcome is AuthOutcome.OK and dict(res.fields)["host"] == "h1"

    # rewrite in place, same size, new mtime: the new content is used without restart
    path.write_text("alice:two::::::host=h2\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (await chain.authenticate(req("alice", "one"))).outcome is AuthOutcome.FAILED
    res = await chain.authenticate(req("alice", "two"))
    assert res.outcome is AuthOutcome.OK and dict(res.fields)["host"] == "h2"

    # replaced by rename (new inode), users added
    tmp = tmp_path / "users.new"
    tmp.write_text("alice:three\nbob:bobpw\n")
    os.replace(tmp, path)
    assert (await chain.authenticate(req("alice", "three"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(req("bob", "bobpw"))).outcome is AuthOutcome.OK

    # deleted: unknown user; back again: found again
    path.unlink()
    assert (await chain.authenticate(req("bob", "bobpw"))).outcome is AuthOutcome.NOUSER
    path.write_text("bob:back\n")
    assert (await chain.authenticate(req("bob", "back"))).outcome is AuthOutcome.OK


async def test_unchanged_file_is_not_reparsed(chain_of, req, tmp_path: Path) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"), files={"users": "a:pw\n"})
    db = chain.passdbs[0]
    assert isinstance(db, PasswdFilePassdb)
    await chain.authenticate(req("a", "pw"))
    first = db._files[db.path].users
    for _ in range(3):
        await chain.authenticate(req("a", "pw"))
    assert db._files[db.path].users is first


async def test_concurrent_lookups_share_one_reload(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"),
                     files={"users": "".join(f"u{i}:p{i}\n" for i in range(2000))})
    results = []

    async def one(i: int) -> None:
        results.append((await chain.authenticate(req(f"u{i}", f"p{i}"))).outcome)

    async with trio.open_nursery() as nursery:
        for i in range(0, 2000, 40):
            nursery.start_soon(one, i)
    assert results == [AuthOutcome.OK] * 50


async def test_check_reports_duplicates(chain_of) -> None:
    chain = chain_of(("passwd-file", "users"), files={"users": "a:x\na:y\n"})
    problems = await chain.check()
    assert len(problems) == 1 and "a exists more than once" in problems[0][1]
